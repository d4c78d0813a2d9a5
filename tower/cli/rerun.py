"""`tower rerun`: remake cataloged files from their provenance records, and compare."""

from __future__ import annotations

from typing import Any

import click

from tower.cli.common import (
    by_name,
    json_option,
    local_only,
    print_json,
    print_rows,
    runtime,
)


def _line(item: dict[str, Any]) -> str:
    """One rerun as a line: the verdict, the file, and what differs or why it failed."""
    if item["verdict"] == "identical":
        return f"identical  {item['lfn']}  {item['size']} bytes, adler32:{item['adler32']}"
    if item["verdict"] == "failed":
        return f"failed     {item['lfn']}: {item['reason']}"
    what = "; ".join(item["differences"]) or "nothing in the record (the payload itself)"
    return (f"differs    {item['lfn']}: {item['new_size']} bytes, "
            f"adler32:{item['new_adler32']} (catalog: {item['size']} bytes, "
            f"adler32:{item['adler32']}); the record differs in: {what}")


@click.command()
@click.argument("target", metavar="LFN|DATASET")
@click.option("--here", is_flag=True,
              help="run it on this machine, with the pilot's own payload code (its inputs "
              "fetched from their replicas)")
@click.option("--site", metavar="NAME", help="run it at this site, in one batch job of the "
              "pilot program (its inputs read from the site's storage element)")
@click.option("--sample", type=click.IntRange(1, 10_000), metavar="N",
              help="rerun N random files of the dataset TARGET and print the fraction "
              "identical")
@click.option("--seed", type=int, help="the seed of --sample's choice (default: random)")
@click.option("--images", metavar="DIR", help="the images root here (default: that of the "
              "site that made the file, in sites.yaml)")
@json_option
def rerun(target: str, here: bool, site: str | None, sample: int | None, seed: int | None,
          images: str | None, as_json: bool) -> int:
    """remake a cataloged file from its provenance record alone, here (--here) or at a site
    (--site NAME), without touching the catalog, and compare: identical (same size and
    adler32) or differs, naming what differs in the record (image digest, software,
    inputs); exit 1 unless every file is identical"""
    from tower.errors import ConfigError
    from tower.management import rerun as reruns

    local_only()
    if here == (site is not None):
        raise ConfigError("give --here or --site NAME (where to rerun), one of them",
                          field="site")
    opened = runtime()
    try:
        if sample is None:
            one = reruns.rerun_here(opened, target, images) if here else \
                reruns.rerun_at(opened, target, site or "")
            results = [one.as_dict()]
            summary: dict[str, Any] = {"reruns": results}
        else:
            summary = reruns.sample(opened, target, sample, seed, images, site)
            results = summary["reruns"] = by_name(summary["reruns"], "lfn")
    finally:
        opened.close()
    if as_json:
        print_json(summary if sample is not None else results[0])
    elif sample is None:
        print(_line(results[0]))
    else:
        figure = summary["reproducibility"]
        print_rows(f"{summary['dataset']}: {summary['identical']} of {summary['rerun']} files "
                   f"rerun identical (of {summary['files']}): reproducibility "
                   f"{100 * figure:.1f}%" if figure is not None else
                   f"{summary['dataset']}: no file to rerun", [_line(item) for item in results])
    return 0 if all(item["verdict"] == "identical" for item in results) else 1


COMMANDS = [rerun]
