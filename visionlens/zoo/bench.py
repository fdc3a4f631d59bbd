"""``visionlens bench transfer``: every technique on every zoo family, scored against planted truth.

A technique (:class:`~visionlens.zoo.technique.Technique`) turns one analysis (usually a plugin run
through :func:`visionlens.runner.run`) into a ground-truth :class:`~visionlens.zoo.scores.Score` on a
zoo model. :func:`run_transfer` loads each zoo model, asks each technique whether it supports the
model (the plugin's own ``supports()`` reason is kept), scores it, recomputes the score on a randomly
initialised copy (Adebayo et al. 2018 model randomization) and writes ``results.json`` (after every
row, so an interrupted run resumes with ``resume=True``), ``results.md`` and ``index.html``.

Every technique comes from the ``visionlens_register_transfer_techniques`` hook: the built-in ones
from :mod:`visionlens.zoo.plugin`, third-party ones from their plugins (see :func:`all_techniques`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..registry import collect_transfer_techniques, plugin_manager, record_error
from ..scale.cluster import map_on_ray
from ..serialize import atomic_write_bytes
from ..threads import rebalance_threads
from ..validation import VisionLensError
from .bench_report import run_history, write_report
from .cascade import cascade_curve, cascade_figure
from .catalog import entries, load, model_card, weights_path
from .entry import ZooEntry
from .scores import Score, sanity_check
from .technique import CONTROL_IMAGES, BenchContext

ROW_KEYS = (
    "family",
    "model",
    "technique",
    "claim",
    "score",
    "chance",
    "normalized",
    "sanity_score",
    "sanity_chance",
    "sanity_normalized",
    "sanity_passed",
    "seconds",
    "supported",
    "reason",
    "interval",  # localization: 95% bootstrap interval of the normalized score over images (else None)
    "baselines",  # localization: {"constant" | "random" | "edge": {score, chance, normalized, interval}}
)


def all_techniques() -> List[Any]:
    """Every technique of the table, from ``visionlens_register_transfer_techniques``: the built-in ones
    (:mod:`visionlens.zoo.plugin`, in table order) first, then those of installed plugins. Names are
    unique: a later technique with a taken name is recorded as a plugin error and skipped."""
    pm = plugin_manager()

    def builtin(plugin_name: str) -> bool:
        return getattr(pm.get_plugin(plugin_name), "__name__", "").startswith("visionlens.")

    out: List[Any] = []
    names = set()
    for plugin_name, tech in sorted(collect_transfer_techniques(), key=lambda it: not builtin(it[0])):
        if tech.name in names:
            record_error(plugin_name, f"transfer technique {tech.name!r} is already defined")
            continue
        names.add(tech.name)
        out.append(tech)
    return out


def _select(
    items: Iterable[Any], wanted: Optional[Sequence[str]], key: Callable[[Any], Sequence[str]], what: str
) -> List[Any]:
    items = list(items)
    if not wanted:
        return items
    known = {k for it in items for k in key(it)}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise VisionLensError(f"Unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}.")
    return [it for it in items if any(k in wanted for k in key(it))]


def _row(entry: ZooEntry, tech: Any, **kw: Any) -> Dict[str, Any]:
    row: Dict[str, Any] = {k: None for k in ROW_KEYS}
    row.update(
        family=entry.family,
        model=f"zoo:{entry.name}",
        technique=tech.name,
        claim=getattr(tech, "claim", ""),
        supported=False,
        reason="",
    )
    row.update(kw)
    return row


def _score_fields(prefix: str, s: Score) -> Dict[str, Any]:
    return {f"{prefix}score": float(s.score), f"{prefix}chance": float(s.chance), f"{prefix}normalized": s.normalized}


def _load_payload(path: Path) -> Dict[str, Any]:
    """A results file's payload (settings, runs, rows); ``{}`` when it is missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
        return payload if isinstance(payload, dict) and isinstance(payload.get("rows"), list) else {}
    except ValueError:
        return {}


def _runs_owning_rows(runs: List[Dict[str, Any]], rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The runs that scored at least one of ``rows`` (matched by ``row["run_id"]``); every run when some row
    predates that field (its run cannot be told)."""
    if any("run_id" not in r for r in rows):
        return runs
    owners = {r["run_id"] for r in rows}
    return [r for r in runs if r.get("run_id") in owners]


def run_transfer(
    out_dir: Union[str, Path],
    families: Optional[Sequence[str]] = None,
    techniques: Optional[Sequence[str]] = None,
    quick: bool = False,
    seed: int = 0,
    resume: bool = True,
    sanity: bool = True,
    verbose: bool = False,
    workers: Optional[int] = 1,
    cascade: Optional[bool] = None,
    weights: Union[str, Path, None] = None,
    backend: str = "local",
    address: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Run the benchmark; writes ``results.json`` / ``results.md`` / ``index.html`` into ``out_dir``.

    ``families`` filters zoo models by family or name; ``techniques`` by technique name or claim.
    With ``resume`` (default), rows already in ``out_dir/results.json`` are kept: a cell scored from the same
    ``weights`` is not scored again, and rows of other models or other weights folders stay (each row names
    its ``weights``). A file scored with other ``quick`` / ``seed`` / ``sanity`` settings is refused rather than
    overwritten (``resume=False`` replaces it).
    ``verbose``: one line per cell on stderr (``[i/n] model x technique  score  seconds``), plus a line
    when the thread count is rebalanced (:func:`visionlens.threads.rebalance_threads`, between cells).
    ``workers``: zoo models scored at once, each in a spawned process with one torch thread (tiny models
    use two processes far better than two threads); ``None``: the current torch thread count (the thread
    policy's share of the cores, so ``OMP_NUM_THREADS=1`` or a busy machine runs in-process), which the CLI
    and the demo use. The default, 1, scores in this process: spawned workers re-import the caller's main
    script, so a script that calls this with ``workers != 1`` needs an ``if __name__ == "__main__":`` guard
    (as any ``multiprocessing`` program). Scores do not depend on it.
    ``cascade``: also score each technique along Adebayo et al.'s cascading randomization
    (:func:`visionlens.zoo.cascade.cascade_curve`, :data:`CASCADE_STEPS` steps from the head down), stored as
    ``row["cascade"]`` with a figure; default: on for the full table, off for ``quick``.
    ``weights``: a folder of trained zoo models (``NAME.safetensors`` + card ``NAME.json``, as
    ``visionlens zoo train NAME --seed S --out DIR`` writes them) to score instead of the shipped ones: the
    other training seeds of the statistics. Each row records the card's training seed as ``model_seed``
    (0 for the shipped models); a model missing from the folder is a row that says so.
    ``backend="ray"``: every (model, technique) cell at this seed is a Ray task (``address``: an existing
    cluster, default a local instance; ``workers`` is then ignored); the cells are the local run's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zoo = _select([e for e in entries().values() if e.benchmark], families, lambda e: (e.family, e.name), "family")
    techs = _select(all_techniques(), techniques, lambda t: (t.name, getattr(t, "claim", "")), "technique")
    settings: Dict[str, Any] = {"quick": quick, "seed": seed, "sanity": sanity}
    weights_dir = None if weights is None else str(weights)
    res_path = out / "results.json"
    previous = _load_payload(res_path) if resume else {}
    old: List[Dict[str, Any]] = list(previous.get("rows") or [])
    history = run_history(previous) if old else []  # a fresh run (or an empty file) starts the history anew
    if old:
        old_settings = dict(previous.get("settings") or {})
        for r in old:  # rows of files written before rows named their weights: the file's folder
            r.setdefault("weights", old_settings.get("weights"))
        old_core = {k: old_settings.get(k) for k in settings}
        if old_core != settings:
            raise VisionLensError(
                f"{res_path} holds rows scored with other settings ({old_core}, this run: {settings}); "
                "they would be lost. Score into another --out folder, or pass --fresh to replace them."
            )
    folders = {r.get("weights") for r in old} | {weights_dir}
    if len(folders) == 1 and weights_dir is not None:
        settings["weights"] = weights_dir
    elif len(folders) > 1:
        settings["weights"] = "per row"
    # a cell is done only when scored from the same weights; other cells of earlier runs stay as they are
    current = _CurrentWeights(weights_dir)
    done = {
        (r["model"], r["technique"]): r
        for r in old
        if r.get("weights") == weights_dir and current.scored(r) and not r.get("skipped")
    }
    selected = {(f"zoo:{e.name}", t.name) for e in zoo for t in techs}
    kept = [r for r in old if (r["model"], r["technique"]) not in selected]  # other cells of earlier runs stay
    rows: List[Dict[str, Any]] = []
    n_cells = sum(1 for e in zoo for t in techs if (f"zoo:{e.name}", t.name) not in done)
    counter = [0]
    run_record = RunRecord.start(cells=n_cells)
    command = _command(
        families, techniques, quick, seed, weights, _options(resume, sanity, workers, cascade, quick, backend)
    )

    def say(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    def flush() -> List[Dict[str, Any]]:
        # every run that wrote rows still in this file, oldest first (a resumed table is assembled from several)
        runs = _runs_owning_rows(history + [{"command": command, **run_record.now()}], kept + rows)
        payload = {
            "settings": settings,
            "command": command,
            "run": run_record.now(),
            "runs": runs,
            "rows": _in_table_order(kept + rows),
        }
        atomic_write_bytes(res_path, (json.dumps(payload, indent=1, default=_json_default) + "\n").encode())
        return runs

    def emit(kind: str, payload: Any) -> None:
        if kind == "say":
            say(payload)
            return
        payload["weights"] = weights_dir  # which trained models the row scored (None: the shipped ones)
        payload["run_id"] = run_record.run_id  # which entry of the file's run history scored it
        rows.append(payload)
        counter[0] += 1
        if payload.get("seconds") is not None:
            model, elapsed = str(payload["model"]).removeprefix("zoo:"), time.perf_counter() - run_record.t0
            say(_progress_line(counter[0], n_cells, model, payload["technique"], payload, elapsed))
        flush()

    jobs: List[_EntryJob] = []
    for entry in zoo:
        rows.extend(done[(f"zoo:{entry.name}", t.name)] for t in techs if (f"zoo:{entry.name}", t.name) in done)
        todo = [t for t in techs if (f"zoo:{entry.name}", t.name) not in done]
        if todo:
            jobs.append(
                _EntryJob(
                    entry.name,
                    tuple(t.name for t in todo),
                    quick,
                    seed,
                    str(out),
                    sanity,
                    cascade=(not quick) if cascade is None else bool(cascade),
                    weights=None if weights is None else str(weights),
                )
            )
    by_name = {t.name: t for t in techs}
    changed = rebalance_threads(min_interval=0.0)  # the idle cores now, when the count is chosen automatically
    if changed is not None:
        say(f"threads: {changed.describe()}")
    n_workers = min(len(jobs), max(1, torch.get_num_threads() if workers is None else int(workers)))
    if backend == "ray":
        cells = [replace(job, techniques=(name,)) for job in jobs for name in job.techniques]
        say(f"scoring {len(cells)} cells as Ray tasks")
        leftover = []
        for cell, (messages, missing) in map_on_ray(_cell_on_ray, cells, address):
            for kind, payload in messages:
                emit(kind, payload)
            if missing:
                leftover.append(replace(cell, techniques=tuple(missing)))
    elif backend != "local":
        raise VisionLensError(f"Unknown backend {backend!r}; expected 'local' or 'ray'.")
    elif n_workers > 1:
        timings = _previous_timings(res_path, quick)  # the folder's last run (read before it is overwritten)
        cost = {job.name: _job_cost(entries()[job.name], [by_name[n] for n in job.techniques], timings) for job in jobs}
        jobs.sort(key=lambda j: -cost[j.name])  # costliest first (longest-processing-time order)
        say(f"scoring {len(jobs)} zoo models in {n_workers} worker processes (1 torch thread each)")
        leftover = _run_in_workers(jobs, n_workers, emit)
    else:
        leftover = jobs
    for job in leftover:  # in-process: serial runs, and techniques a fresh worker process could not find
        _score_entry(entries()[job.name], [by_name[n] for n in job.techniques], job, emit)
    rows[:] = _in_table_order(rows)
    run_record.finish()
    runs = flush()
    write_report(out, _in_table_order(kept + rows), settings, "; ".join(str(r.get("command")) for r in runs) or command)
    return rows


class _CurrentWeights:
    """Whether a kept row's model still has the weights it was scored from (its ``weights_sha256`` against the
    card in ``folder``, read once per model): a retrained model's cells are scored again on resume. Rows written
    before rows carried the hash count as current."""

    def __init__(self, folder: Optional[str]) -> None:
        self.folder = folder
        self.sha: Dict[str, Optional[str]] = {}

    def scored(self, row: Mapping[str, Any]) -> bool:
        sha = row.get("weights_sha256")
        if sha is None:
            return True
        model = str(row["model"]).removeprefix("zoo:")
        if model not in self.sha:
            try:
                self.sha[model] = model_card(model, self.folder).get("sha256")
            except (VisionLensError, OSError, ValueError):
                self.sha[model] = None
        return self.sha[model] == sha


def _previous_timings(path: Path, quick: bool) -> Dict[Tuple[str, str], float]:
    """``{(model, technique): seconds}`` of the scored rows of ``path`` (a ``results.json``) when it was run at
    the same budget (``quick`` or full): their CPU seconds, else their wall seconds; ``{}`` otherwise."""
    try:
        payload = json.loads(path.read_text())
        rows, same = list(payload["rows"]), bool(payload["settings"].get("quick")) == quick
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    out: Dict[Tuple[str, str], float] = {}
    for r in rows if same else []:
        t = r.get("cpu_seconds") if r.get("cpu_seconds") is not None else r.get("seconds")
        if r.get("score") is not None and t is not None:
            out[(str(r["model"]), str(r["technique"]))] = float(t)
    return out


def _job_cost(entry: ZooEntry, techniques: Sequence[Any], timings: Dict[Tuple[str, str], float]) -> float:
    """The expected seconds of scoring ``techniques`` on ``entry``, to hand the costliest zoo models out first:
    each cell's time in ``timings`` (a previous run) when there, 0 for a technique whose ``kinds`` exclude the
    model (it is a row with a reason, not a score), else the entry's ``bench_cost`` times the median known cell
    (1 when nothing is known)."""
    unit = float(np.median(list(timings.values()))) if timings else 1.0
    total = 0.0
    for t in techniques:
        known = timings.get((f"zoo:{entry.name}", t.name))
        if known is not None:
            total += known
        elif entry.kind in getattr(t, "kinds", (entry.kind,)):
            total += entry.bench_cost * unit
    return total


def _in_table_order(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows sorted by the catalogue's model order, then the technique order (unknown names last)."""
    order_m = {f"zoo:{n}": i for i, n in enumerate(entries())}
    order_t = {t.name: i for i, t in enumerate(all_techniques())}
    return sorted(rows, key=lambda r: (order_m.get(r["model"], 1 << 20), order_t.get(r["technique"], 1 << 20)))


# cascading-randomization points per technique (the head, one in between, all -- the last reuses the sanity copy's
# score, so two scorings; see zoo.cascade); a technique may ask for fewer with a ``cascade_steps`` attribute (0:
# none, for a technique that does not read the column model's weights). Zoo models whose random control keeps the
# family's own init (entry.randomize False: the diffusion UNet) get no cascade
CASCADE_STEPS = 3


@dataclass(frozen=True)
class _EntryJob:
    """The cells of one zoo model still to score (picklable: names, not objects)."""

    name: str
    techniques: Tuple[str, ...]
    quick: bool
    seed: int
    out: str
    sanity: bool
    cascade: bool = False
    weights: Optional[str] = None  # a folder of trained zoo models (other training seeds); None: the shipped ones


Emit = Callable[[str, Any], None]


def _score_entry(entry: ZooEntry, todo: Sequence[Any], job: _EntryJob, emit: Emit) -> None:
    """Score ``todo`` on one zoo model (and its randomized copy); ``emit("row", row)`` after every cell."""
    reason = entry.requires() or (
        None
        if weights_path(entry.name, job.weights).is_file()
        else f"no trained weights in {job.weights or 'the package'} (run `visionlens zoo train {entry.name}`)"
    )
    if reason:
        emit("say", f"zoo:{entry.name}: skipped ({reason})")
        for t in todo:  # marked: not a verdict on the cell, so a later run with the weights scores it
            emit("row", {**_row(entry, t, reason=reason), "skipped": True})
        return
    t_load = time.perf_counter()
    model = load(entry.name, directory=job.weights)
    card = model_card(entry.name, job.weights)
    model_seed, weights_sha = int(card.get("seed", 0)), card.get("sha256")
    random_model = load(entry.name, pretrained=False) if job.sanity else None
    emit(
        "say",
        f"zoo:{entry.name} ({entry.family}): loaded in {time.perf_counter() - t_load:.1f} s; {len(todo)} techniques",
    )
    out = Path(job.out)
    inputs: Dict[Any, Any] = {}  # planted batches, shared by the trained, randomized and cascade contexts
    ctx = BenchContext(entry=entry, quick=job.quick, seed=job.seed, out_dir=out, inputs=inputs)
    for tech in todo:
        ok, why = tech.supports(model, entry)
        if not ok:
            emit("row", _row(entry, tech, reason=why))
            continue
        changed = rebalance_threads()
        if changed is not None:
            emit("say", f"  threads: {changed.describe()}")
        ctx.figures = {}
        t0, c0 = time.perf_counter(), time.process_time()
        cpu: Dict[str, float] = {}  # CPU seconds of this process per part of the cell
        try:
            torch.manual_seed(job.seed)
            s = tech.score(model, ctx)
            cpu["trained"] = time.process_time() - c0
            row = _row(
                entry,
                tech,
                supported=True,
                model_seed=model_seed,
                weights_sha256=weights_sha,
                **_score_fields("", s),
                details=s.to_dict()["details"],
            )
            for key in ("interval", "baselines"):  # localization cells (score_heatmap): top-level row fields
                if key in row["details"]:
                    row[key] = row["details"].pop(key)
            if random_model is not None:
                rctx = BenchContext(
                    entry=entry,
                    quick=job.quick,
                    seed=job.seed,
                    out_dir=out,
                    randomized=True,
                    localization_images=None if job.quick else CONTROL_IMAGES,
                    inputs=inputs,
                )
                c1 = time.process_time()
                torch.manual_seed(job.seed)
                rs = tech.score(random_model, rctx)
                cpu["sanity"] = time.process_time() - c1
                chk = sanity_check(s, rs)
                row.update(_score_fields("sanity_", rs), sanity_passed=chk["passed"])
            steps = getattr(tech, "cascade_steps", None)
            steps = CASCADE_STEPS if steps is None else int(steps)
            if job.cascade and entry.randomize and steps > 0:
                c1 = time.process_time()
                pts = cascade_curve(
                    tech,
                    entry,
                    quick=job.quick,
                    seed=job.seed,
                    max_steps=steps,
                    trained_score=s.normalized,
                    random_control=(random_model.source, rs.normalized) if random_model is not None else None,
                    directory=job.weights,
                    inputs=inputs,
                )
                cpu["cascade"] = time.process_time() - c1
                row["cascade"] = pts
                try:
                    fig = cascade_figure({tech.name: pts}, f"zoo:{entry.name} x {tech.name}: cascading randomization")
                    ctx.save_figure(f"cascade_{tech.name}", fig)
                except Exception:  # a figure must never cost the row
                    pass
            row["figures"] = dict(ctx.figures)
        except Exception as exc:  # a technique that crashes is a row with its error, not a dead run
            row = _row(
                entry,
                tech,
                supported=True,
                reason=f"error: {type(exc).__name__}: {exc}",
                error=traceback.format_exc(limit=4),
            )
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["cpu_seconds"] = round(time.process_time() - c0, 2)  # this process's CPU time: the cost on an idle core
        if cpu:
            row["cpu_split"] = {k: round(v, 2) for k, v in cpu.items()}
        emit("row", row)


_WORKER_QUEUE: Any = None


def _init_worker(q: Any) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = q
    torch.set_num_threads(1)


def _worker_score(job: _EntryJob) -> List[str]:
    """Worker process: score ``job``, sending messages ``(name, kind, payload)``; returns the technique names
    this process does not know (registered at run time in the parent), which the parent then scores itself."""
    known = {t.name: t for t in all_techniques()}
    todo = [known[n] for n in job.techniques if n in known]
    missing = [n for n in job.techniques if n not in known]
    entry = entries().get(job.name)
    if entry is None:
        return list(job.techniques)
    _score_entry(entry, todo, job, lambda kind, payload: _WORKER_QUEUE.put((job.name, kind, payload)))
    return missing


def _cell_on_ray(job: _EntryJob) -> Tuple[List[Tuple[str, Any]], List[str]]:
    """A Ray task: score ``job`` (one cell); returns its ``emit`` messages and the techniques this worker lacks."""
    torch.set_num_threads(1)
    known = {t.name: t for t in all_techniques()}
    entry = entries().get(job.name)
    if entry is None:
        return [], list(job.techniques)
    messages: List[Tuple[str, Any]] = []
    _score_entry(entry, [known[n] for n in job.techniques if n in known], job, lambda k, p: messages.append((k, p)))
    return messages, [n for n in job.techniques if n not in known]


def _run_in_workers(jobs: Sequence[_EntryJob], n_workers: int, emit: Emit) -> List[_EntryJob]:
    """Score ``jobs`` in ``n_workers`` spawned processes, relaying their rows to ``emit`` as they come;
    returns what the parent must still run (techniques unknown to a fresh process). A worker that dies
    leaves error rows for its unscored cells."""
    mp_ctx = multiprocessing.get_context("spawn")
    q = mp_ctx.Queue()
    leftover: List[_EntryJob] = []
    seen: Dict[str, set] = {job.name: set() for job in jobs}
    with ProcessPoolExecutor(n_workers, mp_context=mp_ctx, initializer=_init_worker, initargs=(q,)) as pool:
        futures = {pool.submit(_worker_score, job): job for job in jobs}
        pending = set(futures)

        def drain(timeout: float) -> None:
            try:
                name, kind, payload = q.get(timeout=timeout)
            except queue.Empty:
                return
            if kind == "row":
                seen[name].add(payload["technique"])
            emit(kind, payload)

        while pending:
            drain(0.5)
            for fut in [f for f in pending if f.done()]:
                while not q.empty():  # rows the worker sent before it returned
                    drain(0.1)
                pending.discard(fut)
                job = futures[fut]
                exc = fut.exception()
                if exc is None:
                    missing = fut.result()
                    if missing:
                        leftover.append(replace(job, techniques=tuple(missing)))
                    continue
                entry = entries()[job.name]
                for name in job.techniques:
                    if name not in seen[job.name]:
                        row = _row(entry, _Named(name), supported=True, reason=f"error: worker process failed: {exc!r}")
                        row["seconds"] = 0.0
                        emit("row", row)
        while not q.empty():
            drain(0.1)
    return leftover


@dataclass(frozen=True)
class _Named:
    name: str
    claim: str = ""


def _progress_line(i: int, n: int, model: str, technique: str, row: Dict[str, Any], elapsed: float) -> str:
    if row.get("score") is None:
        result = (row.get("reason") or "error")[:60]
    else:
        result = f"normalized {row['normalized']:+.2f}"
        if row.get("sanity_normalized") is not None:
            result += f" (random weights {row['sanity_normalized']:+.2f}{'' if row.get('sanity_passed') else ' ⚠'})"
    count = f"[{i:>{len(str(n))}}/{n}]"
    return f"  {count} {model:>14s} x {technique:<24s} {result:<40s} {row['seconds']:6.1f} s  (total {elapsed:.0f} s)"


def _options(
    resume: bool, sanity: bool, workers: Optional[int], cascade: Optional[bool], quick: bool, backend: str
) -> str:
    """The CLI flags of a run's other arguments (after ``--out DIR``), as the command line would carry them."""
    opts = "" if resume else " --fresh"
    opts += "" if sanity else " --no-sanity"
    if backend != "local":
        opts += f" --backend {backend}"
    elif workers != 1:
        opts += f" --workers {workers if workers is not None else torch.get_num_threads()}"
    opts += f" --threads {torch.get_num_threads()}"
    if cascade is not None and cascade == quick:  # not the default (on for the full table, off for quick)
        opts += " --cascade" if cascade else " --no-cascade"
    return opts


def _command(
    families: Optional[Sequence[str]],
    techniques: Optional[Sequence[str]],
    quick: bool,
    seed: int,
    weights: Union[str, Path, None] = None,
    options: str = "",
) -> str:
    cmd = "visionlens bench transfer"
    if families:
        cmd += " --families " + ",".join(families)
    if techniques:
        cmd += " --techniques " + ",".join(techniques)
    if quick:
        cmd += " --quick"
    if seed:
        cmd += f" --seed {seed}"
    if weights is not None:
        cmd += f" --weights {weights}"
    return cmd + " --out DIR" + options


@dataclass
class RunRecord:
    """What one ``run_transfer`` call cost, stored as ``results.json["run"]`` (so the docs quote it, not a
    person): wall and CPU seconds (this process and its local worker processes, user + system; Ray's workers are
    not counted), the cells it scored,
    the cores, torch threads and the 1-minute load average when it started (a busy machine shows there)."""

    t0: float
    cpu0: float
    cells: int
    load_at_start: Optional[float]
    started: str
    finished: Optional[str] = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # rows name the run that scored them

    @staticmethod
    def _cpu() -> float:
        import resource

        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @classmethod
    def start(cls, cells: int) -> "RunRecord":
        try:
            load: Optional[float] = round(os.getloadavg()[0], 2)
        except (AttributeError, OSError):
            load = None
        return cls(time.perf_counter(), cls._cpu(), cells, load, _utc_now())

    def finish(self) -> None:
        self.finished = _utc_now()

    def now(self) -> Dict[str, Any]:
        return {
            "run_id": self.run_id,
            "cells_scored": self.cells,
            "wall_seconds": round(time.perf_counter() - self.t0, 1),
            "cpu_seconds": round(self._cpu() - self.cpu0, 1),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average_at_start": self.load_at_start,
            "started": self.started,
            "finished": self.finished,  # None while running (an interrupted run's file says so)
        }


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
