"""raftkv.sim: a deterministic discrete-event simulator that tortures the Raft core.

    from raftkv.sim.runner import run_seed, SimOptions
    result = run_seed(seed=7, events=2000)      # SimResult(seed, violations, trace_hash, stats)

    raftkv sim --seeds 1000 --events 2000       # sweep over all cores; exit 1 on a violation
    raftkv sim --seed 7 --trace                 # replay one seed, one line per event

Modules: `scheduler` (clock, event queue), `network` (delays, loss, duplication, partitions),
`disk` (what survives a crash), `statemachine` (the real kv apply logic over `DictState` +
digest chain), `node` (core + disk + state machine + the Ready loop), `workload` (clients with
sessions, retries, CAS; history), `faults` (the nemesis),
`invariants` (safety, after every event), `cluster` (wiring, one event at a time), `history`
(hand-off to `raftkv.check`), `runner` (`run_seed`).

Pure like the core: no clock, no I/O, no global randomness (enforced by tests/unit/test_purity.py);
never imports the runtime, transport or asyncio (import-linter).
"""
