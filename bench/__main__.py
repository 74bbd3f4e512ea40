"""`python -m bench` (what `make bench` runs). `--help` lists the options."""

import argparse
import shutil
import sys
import time
from pathlib import Path

from harness.paths import BUILD, ROOT

from .report import environment, read_json, write_json, write_markdown
from .run import BASELINE, Bench, Settings
from .scenario import ENVOY_PASSES
from .scenarios import REGISTRY

MODES = {
    # rounds; whole seconds (wrk takes no fractions) of a run, the warm-up, a memory run
    # and a callout run; whether to compare upstreams; bare again every N scenarios;
    # memory pass concurrencies besides 1; callout pass concurrencies
    "full": (5, 10, 3, 5, 3, True, 5, "2", "1,2,4"),
    "quick": (2, 1, 1, 1, 1, False, 0, "", "1"),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark wasmgate against bare Envoy and Envoy's native filters "
                    "and write BENCHMARKS.md.")
    parser.add_argument("--quick", action="store_true",
                        help="short rounds for development (under 2 minutes); writes "
                             "build/bench/BENCHMARKS-quick.md unless --out is given")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario names (bare is added to any "
                             "measured in Envoy)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full: 5)")
    parser.add_argument("--seconds", type=_seconds, help="length of each measured run (full: 10)")
    parser.add_argument("--warmup", type=_seconds, help="warm-up run per Envoy, seconds (full: 3)")
    parser.add_argument("--bare-every", type=int,
                        help="load bare again before every N scenarios of a round, so that "
                             "each is compared with a bare run near it in time (full: 5; "
                             "0: once per round)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--upstream", choices=("nginx", "envoy"), default="nginx",
                        help="the upstream behind every scenario (nginx)")
    parser.add_argument("--memory-concurrency",
                        help="concurrencies of the memory pass besides 1 (full: \"2\"; "
                             "quick and \"\": none)")
    parser.add_argument("--memory-seconds", type=_seconds, help="load during a memory run")
    parser.add_argument("--callout-concurrency",
                        help="concurrencies of the callout-count pass (full: \"1,2,4\"; "
                             "quick: \"1\")")
    parser.add_argument("--callout-seconds", type=_seconds, help="load during a callout run")
    parser.add_argument("--compare-upstreams", action=argparse.BooleanOptionalAction,
                        help="also run bare and the wasm floor against both upstreams "
                             "(default: only in a full run without --only/--rounds/...)")
    parser.add_argument("--release-memory", action="store_true",
                        help="every measured Envoy's bootstrap hands freed memory back "
                             "(memory_allocator_manager, 128 MiB a second; not in the "
                             "shipped configs)")
    parser.add_argument("--out", type=Path, help="the Markdown report (full: BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, help="raw results (default: next to the work dir)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: write the report again from a run's raw "
                             "results (after a change to the report's format)")
    parser.add_argument("--workdir", type=Path,
                        help="configs, logs and token files (default: build/bench/run)")
    parser.add_argument("--keystore-old", type=Path, metavar="BINARY",
                        help="the old key store to compare the new one with (default: built "
                             "from main 2ad4e41 into build/bench/ once)")
    return parser.parse_args(argv)


def _seconds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 (wrk runs whole seconds)")
    return value


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in text.split(",") if v.strip())


def settings_from(args) -> Settings:
    mode = "quick" if args.quick else "full"
    (rounds, seconds, warmup, memory_s, callout_s, compare, bare_every, memory_c,
     callout_c) = MODES[mode]
    custom = any(v is not None for v in (args.rounds, args.seconds, args.warmup)) or args.only
    only = tuple(n for n in args.only.split(",") if n)
    return Settings(
        mode="custom" if custom else mode,
        rounds=args.rounds or rounds,
        seconds=args.seconds or seconds,
        warmup=args.warmup if args.warmup is not None else warmup,
        connections=args.connections,
        threads=args.threads,
        upstream=args.upstream,
        memory_concurrency=tuple(c for c in _ints(args.memory_concurrency if args.memory_concurrency
                                                  is not None else memory_c) if c != 1),
        memory_seconds=args.memory_seconds or memory_s,
        callout_concurrency=_ints(args.callout_concurrency if args.callout_concurrency is not None
                                  else callout_c),
        callout_seconds=args.callout_seconds or callout_s,
        compare_upstreams=(compare and not custom if args.compare_upstreams is None
                           else args.compare_upstreams),
        only=only,
        bare_every=args.bare_every if args.bare_every is not None else bare_every,
        keystore_old=str(args.keystore_old) if args.keystore_old else None,
        release_memory=args.release_memory,
    )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for scenario in REGISTRY.all():
            mark = "" if scenario.default else "  [only with --only]"
            print(f"{scenario.name:30} {scenario.what}{mark}")
        return 0
    if args.render:
        settings, env, results, comparison = read_json(args.render)
        out = args.out or ROOT / "BENCHMARKS.md"
        write_markdown(out, settings, env, results, comparison)
        print(f"bench: wrote {out} from {args.render}")
        return 0
    settings = settings_from(args)
    names = list(settings.only)
    try:
        # `bare` comes with any scenario measured in Envoy (the key store's is not).
        if names and BASELINE not in names and any(
                s.passes & ENVOY_PASSES for s in REGISTRY.select(names)):
            names.insert(0, BASELINE)
        scenarios = REGISTRY.select(names)
    except KeyError as err:
        print(f"bench: {err.args[0]}", file=sys.stderr)
        return 2

    workdir = (args.workdir or BUILD / "bench" / "run").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    out = args.out or (BUILD / "bench" / "BENCHMARKS-quick.md" if args.quick
                       else ROOT / "BENCHMARKS.md")
    json_out = args.json or workdir.parent / f"results-{settings.mode}.json"

    started = time.monotonic()
    print(f"bench: {len(scenarios)} scenarios, {settings.rounds} rounds of {settings.seconds:g}s "
          f"({settings.mode}); work directory {workdir}", flush=True)
    with Bench(settings, workdir) as bench:
        print(f"bench: {bench.placement.describe()}", flush=True)
        results = bench.run(scenarios)
    env = environment(bench, argv=sys.argv[1:] if argv is None else argv)
    write_json(json_out, settings, env, results, bench.upstream_comparison)
    write_markdown(out, settings, env, results, bench.upstream_comparison)
    failed = [r for r in results.values() if r.failure]
    for r in failed:
        print(f"bench: FAILED {r.name}: {r.failure}", file=sys.stderr)
    print(f"bench: wrote {out} and {json_out} in {time.monotonic() - started:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
