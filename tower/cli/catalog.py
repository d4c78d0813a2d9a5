"""`tower catalog ls, find, export, verify`: the datasets and their files."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import Group, ask, by_name, json_option, print_json, print_rows, table


@click.group(cls=Group)
def catalog() -> None:
    """the catalog: `catalog ls [DATASET]` lists datasets, or the files of one; `catalog
    find KEY=VALUE...` finds files by metadata; `catalog lineage LFN` shows what a file was
    made from and what was made from it; `catalog export DATASET` prints its file
    list; `catalog verify DATASET` checks every replica at its destination and lists files
    there that nothing names (exit 1 unless all replicas are good and none is left)"""


def print_files(rows: list[dict[str, Any]]) -> None:
    lines = []
    for row in rows:
        where = ", ".join(r["url"] if r["state"] == "good" else f"{r['url']} ({r['state']})"
                          for r in row["replicas"]) or "no replica"
        events = "" if row["events"] is None else f"{row['events']} events"
        lines.append([row["lfn"], row["size"], f"adler32:{row['adler32']}", events, where])
    print("\n".join(table(lines, right="1")))


@catalog.command()
@click.argument("dataset", required=False, metavar="DATASET")
@json_option
def ls(dataset: str | None, as_json: bool) -> int:
    """the datasets with their files and bytes, or the files of one with their replicas"""
    def local(runtime: Any, session: Any) -> Any:
        from catalog import files

        return ({"files": files.files(session, dataset)} if dataset
                else {"datasets": files.datasets(session)})

    if dataset:
        rows = ask("GET", "/catalog/find", local, params={"q": [f"dataset={dataset}"]})
        rows["files"] = by_name(rows["files"], "lfn")
    else:
        rows = {"datasets": by_name(ask("GET", "/catalog/datasets", local)["datasets"])}
    if as_json:
        print_json(rows)
    elif dataset:
        print_files(rows["files"])
    else:
        print("\n".join(table([[row["name"], row["files"], "files", row["bytes"], "bytes"]
                               for row in rows["datasets"]], right="13")))
    return 0


@catalog.command()
@click.argument("terms", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
def find(terms: tuple[str, ...], as_json: bool) -> int:
    """files whose metadata meet every condition, such as software=toysim, source=Rn222
    (a parameter), dataset=NAME, size>1000, events>=100"""
    def local(runtime: Any, session: Any) -> Any:
        from catalog import queries

        return {"files": queries.find(session, queries.parse_conditions(list(terms)))}

    rows = ask("GET", "/catalog/find", local, params={"q": list(terms)})
    if as_json:
        print_json(rows)
    else:
        print_files(rows["files"])
    return 0


@catalog.command()
@click.argument("lfn", metavar="LFN")
@json_option
def lineage(lfn: str, as_json: bool) -> int:
    """what a file was made from, up to the generator, and every file made from it, each
    with its adler32 and the job and attempt that made it"""
    def local(runtime: Any, session: Any) -> Any:
        from catalog import lineage as walk

        return walk.walk(session, lfn)

    data = ask("GET", "/catalog/lineage", local, params={"lfn": lfn})
    if as_json:
        print_json(data)
        return 0
    lines = [[f"{row['depth']:+d}", row["lfn"], f"adler32:{row['adler32']}",
              f"job {row['job']} attempt {row['attempt']}",
              "from " + (", ".join(parent["lfn"] for parent in row["parents"]) or "nothing")]
             for row in [*sorted(({**row, "depth": -row["depth"]} for row in data["ancestors"]),
                                 key=lambda row: (row["depth"], row["lfn"])),
                         {**data["file"], "depth": 0},
                         *data["descendants"]]]
    print("\n".join(table(lines)))
    if data["truncated"]:
        print("(more files than one walk shows: walk again from a file further along)")
    return 0


@catalog.command()
@click.argument("dataset", metavar="DATASET")
@click.option("--format", "fmt", type=click.Choice(["json", "names"]), default="json",
              show_default=True, help="rows with size, adler32, events and good replicas "
              "(json), or the LFNs alone (names)")
@json_option
def export(dataset: str, fmt: str, as_json: bool) -> int:
    """print a dataset's file list"""
    def local(runtime: Any, session: Any) -> Any:
        from catalog import queries

        return {"dataset": dataset,
                "names" if fmt == "names" else "files": queries.export(session, dataset, fmt)}

    data = ask("GET", f"/catalog/datasets/{quote(dataset)}/files", local,
               params={"format": fmt})
    if fmt == "names" and not as_json:
        print("\n".join(data["names"]))
    else:
        print_json(data)
    return 0


@catalog.command()
@click.argument("dataset", metavar="DATASET")
@click.option("--remove-leftovers", is_flag=True,
              help="remove the files in the dataset's directories that no replica names "
              "(orphans, temporaries of dead copies)")
@json_option
def verify(dataset: str, remove_leftovers: bool, as_json: bool) -> int:
    """check every replica of a dataset at its destination and list the files there that
    nothing names (exit 1 unless all replicas are good and none is left)"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management.catalog_verify import verify_dataset

        return verify_dataset(runtime, dataset, remove_leftovers)

    summary = ask("POST", f"/catalog/datasets/{quote(dataset)}/verify", local,
                  params={"remove_leftovers": int(remove_leftovers)})
    kept = len(summary["leftovers"]) - summary["removed"]
    failed = bool(summary["bad"] or summary["missing"] or summary["unreachable"] or kept)
    if as_json:
        print_json(summary)
        return int(failed)
    print_rows(f"{summary['dataset']}: {summary['checked']} of {summary['replicas']} replicas "
               f"checked: {summary['good']} good, {summary['bad']} bad, "
               f"{summary['missing']} missing", [
                   *(f"{problem['state']:<8} {problem['destination']}:{problem['path']}  "
                     f"{problem['error']}" for problem in summary["problems"]),
                   *(f"unreachable {place['destination']} ({place['replicas']} replicas not "
                     f"checked): {place['error']}" for place in summary["unreachable"]),
                   *(f"{leftover['kind']:<8} {leftover['where']}:{leftover['path']}  "
                     f"{leftover['size']} bytes, named by no replica"
                     + ("  (removed)" if summary["removed"] else "")
                     for leftover in summary["leftovers"])])
    return int(failed)


COMMANDS = [catalog]
