"""The HTCondor batch system, against a fake runner with HTCondor's documented output shapes.

No HTCondor daemon can run here, so the commands never run: `FakeRunner` records what
would run and answers with output copied in shape from HTCondor's manual and sources
(condor_submit -terse: "CLUSTER.PROC - CLUSTER.PROC"; condor_q/condor_history -json: an
array of ads, keys sorted, nothing at all when no job matches). The submit description is
decoded here by HTCondor's documented rules, independently of how sites.condor writes it,
and the decoded arguments are run by a real /bin/sh.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from sites.batch import BatchState, PilotRequest
from sites.condor import CondorBatch, status
from sites.config import SiteConfig
from sites.runner import Completed
from tower.errors import BackendError, ConfigError

SECRET = "amqp://pilot:s3cr'et \"$(x)$HOME@broker.example.org/prod"


class FakeRunner:
    """A fake `Runner`: HTCondor cannot run on this machine. It records each command and its
    stdin, and answers from canned `Completed` results by command name (default: success)."""

    where = "fake://submit.example.org"

    def __init__(self, **answers: Completed) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, argv: Sequence[str], input: str | None = None,
            timeout: float | None = None) -> Completed:
        self.calls.append((list(argv), input))
        return self.answers.get(argv[0], Completed(0, "", ""))

    def close(self) -> None:
        pass

    def commands(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]


def site(**settings: Any) -> SiteConfig:
    return SiteConfig(**{"name": "wisc", "batch": "condor", "scratch": "/s", "storage": "/d",
                         **settings})


def request(argv: list[str] | None = None, environment: dict[str, str] | None = None
            ) -> PilotRequest:
    return PilotRequest("5f1c0e", argv or ["pilot", "--tower", "https://tower.example.org/"],
                        {"GRIDTOWER_BROKER_URL": SECRET} if environment is None else environment)


# -- HTCondor's rules, as its manual states them (condor_submit: arguments, environment) --

def commands(description: str) -> dict[str, str]:
    """`name = value` lines; a later command replaces an earlier one, as in condor_submit."""
    found = {}
    for line in description.splitlines():
        name, _, value = line.partition("=")
        found[name.strip()] = value.strip()
    return found


def expand(value: str) -> str:
    """condor_submit's macro expansion, for the only macro we allow: $(DOLLAR) is '$'."""
    assert not re.search(r"\$(?!\(DOLLAR\))", value), f"an unescaped $ in {value!r}"
    return value.replace("$(DOLLAR)", "$")


def new_syntax(value: str) -> list[str]:
    """Split an arguments/environment value in the new syntax: double quotes around all,
    "" a literal double quote, whitespace between items, '' a literal single quote inside
    single quotes."""
    text = expand(value)
    assert text.startswith('"') and text.endswith('"')
    text = text[1:-1]
    assert '"' not in text.replace('""', ""), "a lone double quote"
    text = text.replace('""', '"')
    items: list[str] = []
    current, started, i = "", False, 0
    while i < len(text):
        char = text[i]
        if char == "'":
            started, i = True, i + 1
            while not (text[i] == "'" and text[i + 1:i + 2] != "'"):
                current += text[i]
                i += 2 if text[i] == "'" else 1
            i += 1
        elif char in " \t":
            if started:
                items.append(current)
            current, started, i = "", False, i + 1
        else:
            current, started, i = current + char, True, i + 1
    if started:
        items.append(current)
    return items


def test_new_syntax_decodes_the_manuals_examples() -> None:
    assert new_syntax('"one \'two with spaces\' 3"') == ["one", "two with spaces", "3"]
    assert new_syntax('"one ""two"" \'spacey \'\'quoted\'\' argument\'"') == [
        "one", '"two"', "spacey 'quoted' argument"]
    assert new_syntax('"one=1 two=""2"" three=\'spacey \'\'quoted\'\' value\'"') == [
        "one=1", 'two="2"', "three=spacey 'quoted' value"]


# -- submitting --

def test_a_pilot_is_submitted_on_stdin_and_gets_the_terse_job_id() -> None:
    runner = FakeRunner(condor_submit=Completed(0, "4223.0 - 4223.0\n", ""))
    batch = CondorBatch(site(pilot={"cores": 8, "memory": "16GB", "walltime": "48h"}), runner)

    assert batch.submit(request()) == "4223.0"
    assert runner.commands() == [["mkdir", "-p", "--", "/s/pilot-logs"],
                                 ["condor_submit", "-terse", "-"]]
    description = runner.calls[1][1]
    assert description is not None and description.endswith("queue 1\n")
    submit = commands(description)
    assert submit["universe"] == "vanilla"
    assert submit["executable"] == "/bin/sh"
    assert submit["transfer_executable"] == "false"
    assert submit["request_cpus"] == "8"
    assert submit["request_memory"] == "16384"  # MiB
    assert submit["allowed_job_duration"] == str(48 * 3600)
    assert submit["periodic_remove"] == "JobStatus == 1 && NumJobStarts > 0"
    assert submit["output"] == submit["error"] == "/s/pilot-logs/5f1c0e.log"
    assert submit["log"] == "/s/pilot-logs/5f1c0e.condor.log"
    assert batch.log_path("5f1c0e") == "/s/pilot-logs/5f1c0e.log"

    batch.submit(request())
    assert [argv[0] for argv in runner.commands()].count("mkdir") == 1


def test_arguments_survive_htcondor_quoting_and_reach_the_pilot_through_the_shell() -> None:
    tricky = ["a b", "it's", 'say "hi"', "$(Cluster)", "$ENV(HOME)", "; rm -rf / &", "",
              "back\\slash", "tab-free\u00e9"]
    setup = ["if true; then", "GREETING='hello world'", "fi", "export GREETING"]
    argv = ["/bin/sh", "-c", 'printf "%s|" "$GREETING" "$@"', "inner", *tricky]
    batch = CondorBatch(site(setup=setup), FakeRunner())

    arguments = new_syntax(commands(batch.description(request(argv)))["arguments"])

    assert arguments[0] == "-c"
    assert arguments[3:] == [str(len(setup)), *setup, *argv]
    done = subprocess.run(["/bin/sh", *arguments], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "|".join(["hello world", *tricky]) + "|"


def test_secrets_are_in_the_description_only_never_on_a_command_line() -> None:
    runner = FakeRunner(condor_submit=Completed(0, "17.0 - 17.0\n", ""))
    batch = CondorBatch(site(), runner)

    batch.submit(request(environment={"GRIDTOWER_BROKER_URL": SECRET, "EMPTY": ""}))

    description = runner.calls[-1][1]
    assert description is not None
    assert new_syntax(commands(description)["environment"]) == [
        f"GRIDTOWER_BROKER_URL={SECRET}", "EMPTY="]
    for argv, _ in runner.calls:
        assert not any("s3cr" in part for part in argv)


@pytest.mark.parametrize(("change", "field"), [
    ({"argv": ["pilot", "--id", "x\nqueue 100"]}, "argv[2]"),
    ({"argv": ["pilot", "tab\there"]}, "argv[1]"),
    ({"environment": {"GRIDTOWER_BROKER_URL": "amqp://u:p\r\n+Evil = 1@h/"}},
     "environment.GRIDTOWER_BROKER_URL"),
    ({"argv": ["pilot", "$$(Memory)"]}, "argv[1]"),
])
def test_values_that_would_break_their_line_are_refused_naming_the_field(
        change: dict[str, Any], field: str) -> None:
    runner = FakeRunner()
    batch = CondorBatch(site(), runner)
    with pytest.raises(BackendError) as caught:
        batch.submit(request(**change))
    assert caught.value.field == field
    assert f"site=wisc: {field}: must not contain" in str(caught.value)
    assert "amqp://u:p" not in str(caught.value)
    assert runner.calls == []


def test_a_setup_line_with_a_newline_is_refused_naming_it() -> None:
    batch = CondorBatch(site(setup=["module load root", "echo x\nqueue 5"]), FakeRunner())
    with pytest.raises(BackendError, match=r"sites\.wisc\.setup\[1\]: must not contain"):
        batch.description(request())


def test_an_environment_name_must_be_a_shell_name() -> None:
    with pytest.raises(BackendError, match="'BAD NAME' is not a shell name"):
        CondorBatch(site(), FakeRunner()).description(request(environment={"BAD NAME": "x"}))


def test_batch_options_reach_the_description_before_the_queue_command() -> None:
    batch = CondorBatch(site(batch_options={
        "requirements": '(OpSys == "LINUX") && (Arch == "X86_64")',
        "accounting_group": "group_physics.prod",
        "extra": ['+ProjectName = "physics"', "stream_output = true"],
        "log_dir": "/home/prod/pilot logs",
    }), FakeRunner())

    description = batch.description(request())
    submit = commands(description)
    assert submit["requirements"] == '(OpSys == "LINUX") && (Arch == "X86_64")'
    assert submit["accounting_group"] == "group_physics.prod"
    assert submit["+ProjectName"] == '"physics"'
    assert submit["output"] == "/home/prod/pilot logs/5f1c0e.log"
    assert description.endswith('+ProjectName = "physics"\nstream_output = true\nqueue 1\n')


@pytest.mark.parametrize(("options", "message"), [
    ({"partition": "long"}, "sites.wisc.batch_options.partition: unknown key"),
    ({"requirements": "Memory > 1\nqueue 100"},
     "sites.wisc.batch_options.requirements: must not contain newlines"),
    ({"accounting_group": "group_a \\"},
     "sites.wisc.batch_options.accounting_group: 'group_a \\\\': expected a group name"),
    ({"extra": ["queue 10"]}, "sites.wisc.batch_options.extra: 'queue 10': gridtower queues"),
    ({"extra": ["request_disk"]}, "sites.wisc.batch_options.extra: 'request_disk': each item"),
])
def test_bad_batch_options_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CondorBatch(site(batch_options=options), FakeRunner())
    assert message in str(caught.value)


def test_a_refused_submission_names_site_and_command_without_the_secret() -> None:
    refusal = ("\nERROR: on Line 5 of submit file: Environment: Unbalanced quote starting here:"
               f" 'GRIDTOWER_BROKER_URL={SECRET}'\nERROR: Failed to parse command file (line 5).\n")
    batch = CondorBatch(site(), FakeRunner(condor_submit=Completed(1, "", refusal)))
    with pytest.raises(BackendError) as caught:
        batch.submit(request())
    message = str(caught.value)
    assert message.startswith("site=wisc (fake://submit.example.org): condor_submit exited 1: ")
    assert "Failed to parse command file" in message
    assert "s3cr" not in message and "***" in message


@pytest.mark.parametrize("stdout", ["", "Submitting job(s).\n", "30.0 - 30.3\n"])
def test_an_answer_that_is_not_one_job_id_is_an_error(stdout: str) -> None:
    batch = CondorBatch(site(), FakeRunner(condor_submit=Completed(0, stdout, "")))
    with pytest.raises(BackendError, match="condor_submit answered .*not one job id"):
        batch.submit(request())


# -- following pilots --

CONDOR_Q = """[
{
  "ClusterId": 4223,
  "JobStatus": 2,
  "NumJobStarts": 1,
  "ProcId": 0
}
,
{
  "ClusterId": 4224,
  "JobStatus": 1,
  "NumJobStarts": 0,
  "ProcId": 0
}
,
{
  "ClusterId": 4225,
  "HoldReason": "The job exceeded allowed job duration of 2+00:00:00",
  "HoldReasonCode": 46,
  "JobStatus": 5,
  "NumJobStarts": 1,
  "ProcId": 0
}
]
"""

CONDOR_HISTORY = """[
{
  "ClusterId": 4226,
  "ExitBySignal": false,
  "ExitCode": 3,
  "JobStatus": 4,
  "NumJobStarts": 1,
  "ProcId": 0
}
,
{
  "ClusterId": 4227,
  "JobStatus": 3,
  "NumJobStarts": 0,
  "ProcId": 0,
  "RemoveReason": "via condor_rm (by user prodpilot)"
}
]
"""


def test_statuses_ask_condor_q_then_condor_history_for_the_rest() -> None:
    runner = FakeRunner(condor_q=Completed(0, CONDOR_Q, ""),
                        condor_history=Completed(0, CONDOR_HISTORY, ""))
    ids = ["4223.0", "4224.0", "4225.0", "4226.0", "4227.0", "4228.0"]

    found = CondorBatch(site(), runner).statuses(ids)

    assert {batch_id: (found[batch_id].state, found[batch_id].outcome) for batch_id in ids} == {
        "4223.0": (BatchState.RUNNING, None),
        "4224.0": (BatchState.PENDING, None),
        "4225.0": (BatchState.ENDED, "pilot_killed"),
        "4226.0": (BatchState.ENDED, "pilot_vanished"),
        "4227.0": (BatchState.ENDED, "pilot_killed"),
        "4228.0": (BatchState.ENDED, "pilot_vanished"),
    }
    assert found["4226.0"].exit_code == 3
    assert found["4225.0"].reason == "Held: The job exceeded allowed job duration of 2+00:00:00"
    assert found["4228.0"].reason == "unknown to condor_q and condor_history"
    query, history = runner.commands()
    assert query[:3] == ["condor_q", "-json", "-attributes"] and query[4:] == ids
    assert {"JobStatus", "HoldReasonCode", "RemoveReason", "NumJobStarts"} <= set(
        query[3].split(","))
    assert history[:3] == ["condor_history", "-json", "-attributes"]
    assert history[4:] == ["-match", "3", "4226.0", "4227.0", "4228.0"]


def test_an_empty_queue_prints_nothing_and_every_job_is_looked_up_in_history() -> None:
    runner = FakeRunner(condor_q=Completed(0, "", ""), condor_history=Completed(0, "\n", ""))
    found = CondorBatch(site(), runner).statuses(["7.0", "8.0"])
    assert all(found[i].state is BatchState.ENDED for i in ("7.0", "8.0"))
    assert runner.commands()[1][-3:] == ["2", "7.0", "8.0"]


def test_condor_q_failing_is_an_error_not_ended_pilots() -> None:
    failure = Completed(1, "", "\n-- Failed to fetch ads from: <10.0.0.1:9618> : submit.example"
                              ".org\nCEDAR:6001:Failed to connect to <10.0.0.1:9618>\n")
    batch = CondorBatch(site(), FakeRunner(condor_q=failure))
    with pytest.raises(BackendError, match=r"site=wisc \(fake://submit.example.org\): condor_q "
                                           r"exited 1: .*Failed to connect"):
        batch.statuses(["7.0"])


def test_no_history_still_means_the_job_left_the_queue() -> None:
    runner = FakeRunner(condor_q=Completed(0, "", ""),
                        condor_history=Completed(1, "", "Error: No history file is defined\n"))
    assert CondorBatch(site(), runner).statuses(["7.0"])["7.0"].state is BatchState.ENDED


def test_output_that_is_not_json_is_an_error() -> None:
    batch = CondorBatch(site(), FakeRunner(condor_q=Completed(0, "-- Schedd: submit : <...>", "")))
    with pytest.raises(BackendError, match="condor_q printed no JSON"):
        batch.statuses(["7.0"])


def test_no_ids_no_command_and_foreign_ids_never_reach_a_command_line() -> None:
    runner = FakeRunner()
    batch = CondorBatch(site(), runner)
    assert batch.statuses([]) == {}
    assert batch.statuses(["-constraint", "true"])["true"].state is BatchState.ENDED
    batch.cancel(["-all"])
    assert runner.calls == []


def ad(job_status: int, **attributes: Any) -> dict[str, Any]:
    return {"ClusterId": 1, "ProcId": 0, "JobStatus": job_status, **attributes}


@pytest.mark.parametrize(("job_ad", "state", "outcome"), [
    (ad(1, NumJobStarts=0), BatchState.PENDING, None),
    (ad(1, NumJobStarts=1, VacateReasonCode=1014, VacateReason="The slot was drained"),
     BatchState.ENDED, "preempted"),
    (ad(1, NumJobStarts=1, VacateReasonCode=1019), BatchState.ENDED, "preempted"),
    (ad(1, NumJobStarts=2), BatchState.ENDED, "preempted"),
    (ad(1, NumJobStarts=1, VacateReasonCode=1008,
        VacateReason="The shadow failed to reconnect"), BatchState.ENDED, "node_failure"),
    (ad(1, NumJobStarts=1, VacateReasonCode=34), BatchState.ENDED, "out_of_memory"),
    (ad(2, NumJobStarts=1), BatchState.RUNNING, None),
    (ad(6, NumJobStarts=1), BatchState.RUNNING, None),
    (ad(7, NumJobStarts=1), BatchState.RUNNING, None),
    (ad(4, ExitBySignal=False, ExitCode=0), BatchState.ENDED, "pilot_vanished"),
    (ad(4, ExitBySignal=True, ExitSignal=9), BatchState.ENDED, "pilot_vanished"),
    (ad(3, RemoveReason="The job attribute PeriodicRemove expression '( JobStatus == 1 && "
                        "NumJobStarts > 0 )' evaluated to TRUE"), BatchState.ENDED, "preempted"),
    (ad(3, RemoveReason="via condor_rm (by user prodpilot)"), BatchState.ENDED, "pilot_killed"),
    (ad(3, RemoveReason="The system macro SYSTEM_PERIODIC_REMOVE expression '( MemoryUsage > "
                        "RequestMemory )' evaluated to TRUE"), BatchState.ENDED, "pilot_vanished"),
    (ad(5, HoldReasonCode=15, HoldReason="submitted on hold at user's request"),
     BatchState.PENDING, None),
    (ad(5, HoldReasonCode=16, HoldReason="Spooling input data files"), BatchState.PENDING, None),
    (ad(5, HoldReasonCode=46), BatchState.ENDED, "pilot_killed"),
    (ad(5, HoldReasonCode=47), BatchState.ENDED, "pilot_killed"),
    (ad(5, HoldReasonCode=34, HoldReasonSubCode=102,
        HoldReason="Job has gone over cgroup memory limit of 16000 megabytes. Last measured "
                   "usage: 16234 megabytes.  Consider resubmitting with a higher request_memory."),
     BatchState.ENDED, "out_of_memory"),
    (ad(5, HoldReasonCode=1, HoldReason="via condor_hold (by user admin)"),
     BatchState.ENDED, "pilot_killed"),
    (ad(5, HoldReasonCode=12, HoldReason="Error from slot1_3@wn042.example.org: STARTER at "
                                         "10.0.0.42 failed to send file(s)"),
     BatchState.ENDED, "node_failure"),
    (ad(5, HoldReasonCode=6), BatchState.ENDED, "node_failure"),
    (ad(5, HoldReasonCode=26, HoldReason="SYSTEM_PERIODIC_HOLD"), BatchState.ENDED,
     "pilot_vanished"),
    (ad(9), BatchState.ENDED, "pilot_vanished"),
])
def test_the_state_and_outcome_table(job_ad: dict[str, Any], state: BatchState,
                                     outcome: str | None) -> None:
    found = status(job_ad)
    assert (found.state, found.outcome) == (state, outcome)


def test_reasons_are_htcondors_words_and_stay_short() -> None:
    assert status(ad(4, ExitBySignal=True, ExitSignal=9)).exit_code == -9
    assert status(ad(4, ExitBySignal=True, ExitSignal=9)).reason == "Completed (signal 9)"
    assert status(ad(4, ExitBySignal=False, ExitCode=2)).reason == "Completed (exit code 2)"
    assert status(ad(5, HoldReasonCode=6)).reason == "Held: code 6"
    assert status(ad(1, NumJobStarts=1)).reason == "Evicted"
    held = status(ad(5, HoldReasonCode=13, HoldReason="x" * 5000))
    assert held.reason is not None and len(held.reason) == 200


# -- cancelling --

def test_cancel_removes_the_jobs_and_tolerates_jobs_already_gone() -> None:
    gone = Completed(1, "Job 41.0 marked for removal\n",
                     "Job 42.0 not found\nJob 43.0 already marked for removal\n")
    runner = FakeRunner(condor_rm=gone)
    CondorBatch(site(), runner).cancel(["41.0", "42.0", "43.0"])
    assert runner.commands() == [["condor_rm", "41.0", "42.0", "43.0"]]


def test_cancel_fails_when_the_schedd_refuses() -> None:
    refused = Completed(1, "", "Permission denied to remove job 41.0\n")
    with pytest.raises(BackendError, match="condor_rm exited 1: Permission denied"):
        CondorBatch(site(), FakeRunner(condor_rm=refused)).cancel(["41.0"])
