#!/usr/bin/env python3
"""Toy simulation: energy deposits of the radon-222 decay chain down to Pb-210.

Example payload for a gridtower simulation production. Each event is one
chain started from a configurable isotope; every alpha, beta and gamma
deposit becomes one CSV row. Standard library only, fully reproducible:
an event's random stream depends only on (seed, event number), so a range
split across jobs yields exactly the same events as one big job.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass

ELECTRON_MASS_MEV = 0.511
DAY, MINUTE = 86400.0, 60.0


@dataclass(frozen=True)
class Decay:
    """One chain member: how it decays and into what."""

    half_life_s: float
    mode: str  # "alpha" or "beta"
    energy_mev: float  # alpha kinetic energy, or beta Q-value
    gammas: tuple[tuple[float, float], ...]  # (energy MeV, emission probability)
    daughter: str


# Approximate nuclear data; good enough for a toy, not for physics.
CHAIN: dict[str, Decay] = {
    "Rn222": Decay(3.82 * DAY, "alpha", 5.49, (), "Po218"),
    "Po218": Decay(3.10 * MINUTE, "alpha", 6.00, (), "Pb214"),
    "Pb214": Decay(26.8 * MINUTE, "beta", 1.02, ((0.352, 0.37), (0.295, 0.19)), "Bi214"),
    "Bi214": Decay(19.9 * MINUTE, "beta", 3.27, ((0.609, 0.46),), "Po214"),
    "Po214": Decay(164e-6, "alpha", 7.69, (), "Pb210"),
}
END_ISOTOPE = "Pb210"

# key -> (type, required, default)
STEERING_KEYS: dict[str, tuple[type, bool, object]] = {
    "seed": (int, True, None),
    "first_event": (int, True, None),
    "events": (int, True, None),
    "output": (str, True, None),
    "start_isotope": (str, False, "Rn222"),
    "resolution": (float, False, 0.03),
    "alpha_quenching": (float, False, 1.0),
    "fail_probability": (float, False, 0.0),
}


class SteeringError(ValueError):
    """A steering file problem; the message names the offending key."""


def derived_rng(*parts: object) -> random.Random:
    """A Random seeded from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def beta_shape(t: float, q: float) -> float:
    """Allowed beta spectrum p(T) ~ p*E*(Q-T)^2 without the Fermi function."""
    m = ELECTRON_MASS_MEV
    return math.sqrt(t * t + 2 * t * m) * (t + m) * (q - t) ** 2


_BETA_MAX: dict[float, float] = {}


def sample_beta(rng: random.Random, q: float) -> float:
    """Beta kinetic energy by rejection; envelope from a grid scan, cached per Q."""
    if q not in _BETA_MAX:
        # 5% headroom covers the grid missing the true maximum.
        _BETA_MAX[q] = 1.05 * max(beta_shape(q * i / 1000, q) for i in range(1001))
    fmax = _BETA_MAX[q]
    while True:
        t = rng.uniform(0.0, q)
        if rng.uniform(0.0, fmax) <= beta_shape(t, q):
            return t


def smear(rng: random.Random, e_mev: float, resolution: float) -> float:
    """Gaussian detector resolution, sigma/E = resolution/sqrt(E/MeV)."""
    sigma = resolution * math.sqrt(e_mev)
    return max(0.0, rng.gauss(e_mev, sigma))  # a detector never reads negative


Deposit = tuple[str, str, float, float]  # isotope, particle, energy MeV, time s


def simulate_event(rng: random.Random, start: str, cfg: dict) -> list[Deposit]:
    """Run one chain; return deposits as (isotope, particle, energy MeV, time s)."""
    deposits: list[Deposit] = []
    isotope, t = start, 0.0
    while isotope != END_ISOTOPE:
        decay = CHAIN[isotope]
        t += rng.expovariate(math.log(2) / decay.half_life_s)
        if decay.mode == "alpha":
            e = decay.energy_mev * cfg["alpha_quenching"]
        else:
            e = sample_beta(rng, decay.energy_mev)
        deposits.append((isotope, decay.mode, smear(rng, e, cfg["resolution"]), t))
        for e_gamma, prob in decay.gammas:
            if rng.random() < prob:
                deposits.append((isotope, "gamma", smear(rng, e_gamma, cfg["resolution"]), t))
        isotope = decay.daughter
    return deposits


def load_steering(path: str) -> dict:
    """Read and validate the steering JSON; raise SteeringError on any problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise SteeringError(f"cannot read steering file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SteeringError("steering file must contain a JSON object")
    unknown = sorted(set(raw) - set(STEERING_KEYS))
    if unknown:
        raise SteeringError(f"unknown steering key(s): {', '.join(unknown)}")
    cfg = {}
    for key, (kind, required, default) in STEERING_KEYS.items():
        if key not in raw:
            if required:
                raise SteeringError(f"missing required steering key: {key}")
            cfg[key] = default
            continue
        value = raw[key]
        # bool is an int subclass; ints are acceptable where floats are expected.
        ok = not isinstance(value, bool) and (
            isinstance(value, kind) or (kind is float and isinstance(value, int)))
        if not ok:
            raise SteeringError(f"steering key {key} must be {kind.__name__}, got {value!r}")
        cfg[key] = float(value) if kind is float else value
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: dict) -> None:
    """Value checks beyond types."""
    checks = [
        ("first_event", cfg["first_event"] >= 0, "must be >= 0"),
        ("events", cfg["events"] > 0, "must be > 0"),
        ("output", cfg["output"] not in ("", ".", "..") and os.sep not in cfg["output"]
         and "/" not in cfg["output"], "must be a plain file name"),
        ("start_isotope", cfg["start_isotope"] in CHAIN, f"must be one of {', '.join(CHAIN)}"),
        ("resolution", 0.0 <= cfg["resolution"] < 1.0, "must be in [0, 1)"),
        ("alpha_quenching", 0.0 < cfg["alpha_quenching"] <= 1.0, "must be in (0, 1]"),
        ("fail_probability", 0.0 <= cfg["fail_probability"] <= 1.0, "must be in [0, 1]"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise SteeringError(f"steering key {key} {why}, got {cfg[key]!r}")


def run(cfg: dict, output_dir: str, sleep_per_event: float) -> None:
    """Simulate all events into a temp file, then rename it into place atomically."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, cfg["output"])
    # Same directory as the final file so os.replace is an atomic rename.
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=f".{cfg['output']}.", suffix=".part")
    n_events, n_deposits, total_kev = cfg["events"], 0, 0.0
    step = max(1, n_events // 10)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["event", "isotope", "particle", "energy_kev", "time_s"])
            for i in range(n_events):
                event = cfg["first_event"] + i
                rng = derived_rng(cfg["seed"], "event", event)
                for isotope, particle, e_mev, t in simulate_event(rng, cfg["start_isotope"], cfg):
                    writer.writerow([event, isotope, particle, f"{e_mev * 1000:.3f}", f"{t:.9f}"])
                    n_deposits += 1
                    total_kev += e_mev * 1000
                if (i + 1) % step == 0 or i + 1 == n_events:
                    print(f"toysim: {i + 1}/{n_events} events done", flush=True)
                if sleep_per_event > 0:
                    time.sleep(sleep_per_event)
        os.replace(tmp, final)
    except BaseException:
        # Any failure (incl. Ctrl-C) leaves nothing behind; SIGKILL leaves only the .part.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"toysim: done, events={n_events} deposits={n_deposits} "
          f"total_energy_kev={total_kev:.3f} output={final}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        description="Toy Rn-222 decay-chain simulation writing energy deposits to CSV.")
    parser.add_argument("--steering", required=True, help="JSON steering file")
    parser.add_argument("--output-dir", default=".",
                        help="directory for the output file (default: .)")
    parser.add_argument("--sleep-per-event", type=float, default=0.0, metavar="SECONDS",
                        help="sleep between events, to make test jobs take time (default: 0)")
    args = parser.parse_args(argv)
    if args.sleep_per_event < 0:
        parser.error("--sleep-per-event must be >= 0")
    try:
        cfg = load_steering(args.steering)
    except SteeringError as exc:
        print(f"toysim: error: {exc}", file=sys.stderr)
        return 2
    # Per-job decision from (seed, first_event): reproducible, yet jobs of one
    # production sharing a seed do not all fail together.
    if derived_rng(cfg["seed"], "fail", cfg["first_event"]).random() < cfg["fail_probability"]:
        print("simulated failure", file=sys.stderr)
        return 3
    run(cfg, args.output_dir, args.sleep_per_event)
    return 0


if __name__ == "__main__":
    sys.exit(main())
