#!/usr/bin/env bash
# One whole two-step chain (simulation, reconstruction) on the embedded default: SQLite, the database queue,
# local pilots. Leaves everything in ./demo-home and says where to look.
set -euo pipefail
home="$PWD/demo-home"
rm -rf "$home"
tower init "$home" >/dev/null
export TOWER_CONFIG="$home/tower.yaml"
unset TOWER_DATABASE_URL TOWER_BROKER_URL

echo "== submitting the example chain: simulation and reconstruction (dry run first)"
tower submit --dry-run "$home/production.yaml"
tower submit "$home/production.yaml"

echo "== running the tower until every job has ended"
status=0
tower run --until-done --timeout 600 || status=$?

echo "== status"
tower status
dataset=$(tower status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["productions"][0]["dataset"])')
echo "== catalog of dataset $dataset"
tower catalog ls "$dataset"
reco=$(tower status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["productions"][1]["dataset"])')
echo "== the chain: simulation, then reconstruction of each file as it came"
tower show radon-chain-reco | grep -A2 "chain of"
echo "== catalog of dataset $reco"
tower catalog ls "$reco"
first=$(tower catalog ls "$reco" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["lfn"])')
echo "== lineage of $first"
tower catalog lineage "$first"
summaries=$(tower catalog ls "$reco" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["files"]))')
files=$(tower catalog ls "$dataset" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["files"]))')
jobs=$(tower status --json | python3 -c 'import json,sys; print(", ".join("%s %s of %s" % (p["name"], p["states"].get("done", 0), p["jobs"]) for p in json.load(sys.stdin)["productions"]))')
cat <<SUMMARY

== summary
jobs done:        $jobs
files cataloged:  $files simulated, $summaries summaries (size and adler32 verified at the destination)
outputs:          $home/store/$dataset/, $home/store/$reco/
tower database:   $home/tower.db
pilot logs:       $home/sites/local/scratch/pilot-logs/
look around:      export TOWER_CONFIG=$home/tower.yaml; tower status; tower jobs; tower job 1
SUMMARY
exit $status
