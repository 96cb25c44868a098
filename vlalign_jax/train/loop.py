"""The training loop: one jitted, sharded step for any method, async checkpoints, exact resume.

Re-running the same command on the same workdir resumes from the newest complete checkpoint; the
train state, the data iterator position and the config are all in it, so the continuation is
bit-identical to an uninterrupted run on the same mesh. SIGTERM checkpoints the current step and
stops (`preemption.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding

from vlalign_jax.data.pipeline import to_global, train_iterator
from vlalign_jax.data.records import RecordErrors
from vlalign_jax.methods import Method, make_method
from vlalign_jax.parallel import distributed
from vlalign_jax.parallel.mesh import make_mesh
from vlalign_jax.parallel.rules import BATCH_AXES, LOGICAL_AXIS_RULES, batch_sharding, replicated
from vlalign_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from vlalign_jax.train.config import save_config
from vlalign_jax.train.config_checks import INT32_MAX
from vlalign_jax.train.export import save_model_config
from vlalign_jax.train.initial_weights import check_against, place, read_initial_params
from vlalign_jax.train.initialization import abstract_state, create_state, state_shardings
from vlalign_jax.train.metrics import MetricsWriter
from vlalign_jax.train.optim import make_optimizer, schedule_from_config
from vlalign_jax.train.preemption import Preempted, PreemptionWatcher
from vlalign_jax.train.state import TrainState
from vlalign_jax.train.step import make_train_step
from vlalign_jax.train.throughput import Throughput
from vlalign_jax.train.watchdog import HangWatchdog, PeerFailedError
from vlalign_jax.train.workdir import check_workdir

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN/inf; no checkpoint was written after it."""


@dataclasses.dataclass
class Run:
    """Everything a training run is built from; tests and benchmarks use it without the loop."""

    config: ml_collections.ConfigDict
    method: Method
    mesh: Mesh
    optimizer: optax.GradientTransformation
    abstract: TrainState
    shardings: TrainState
    data_sharding: NamedSharding
    step_fn: Any  # jitted (state, batch) -> (state, metrics), state donated
    schedule: optax.Schedule

    def init_state(self) -> TrainState:
        """A fresh state: random, or from `model.init_from` (a checkpoint or another run's workdir)."""
        ema = bool(self.config.train.get("ema_decay", 0.0))
        initial = None
        if self.config.model.get("init_from", ""):
            source = self.config.model.init_from
            params = self.method.adapt_initial_params(
                read_initial_params(source, self.config.model.get("init_family", "") or None))
            initial = place(check_against(params, self.abstract.params, source), self.shardings.params)
        return create_state(self.method, self.optimizer, self.mesh, self.config.train.seed, ema, initial)[0]

    def iterator(self, errors: RecordErrors | None = None):
        """This process's training batches; `errors` counts (or raises on) bad records."""
        tc, data = self.config.train, self.config.data
        source, preprocess = self.method.train_data()
        return train_iterator(source, preprocess, tc.batch_size, data.get("seed", tc.seed),
                              jax.process_index(), jax.process_count(), data.get("num_threads", 2),
                              num_workers=data.get("num_workers", 0), errors=errors)

    def global_batch(self, local_batch: dict) -> dict:
        return to_global(local_batch, self.data_sharding, self.method.batch_fields)

    def context(self):
        """The mesh and logical-axis rules that tracing the model needs."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
        return stack


def setup_run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
              method: Method | None = None) -> Run:
    """Build the method, mesh, optimizer, state shardings and the jitted step from a config."""
    method = method or make_method(config)
    mesh = make_mesh(config.mesh.to_dict(), devices)
    tc = config.train
    if tc.get("epochs", 0):
        # Epochs over the training source fix the step count (and so the schedule's length).
        records = len(method.train_data()[0])
        tc.steps = int(tc.epochs * (records // tc.batch_size))
        if not 1 <= tc.steps <= INT32_MAX:  # the step counter is int32 on device
            raise ValueError(f"train.epochs={tc.epochs} over {records} training records in batches of "
                             f"{tc.batch_size} makes {tc.steps} steps; the step count must be 1 to {INT32_MAX}")
        log.info("train.epochs=%s: %d steps", tc.epochs, tc.steps)
    ema = bool(tc.get("ema_decay", 0.0))
    # The optimizer's parameter groups need only the tree's paths and shapes.
    param_shapes = nn.meta.unbox(jax.eval_shape(method.init_variables, jax.random.PRNGKey(tc.seed))["params"])
    optimizer = make_optimizer(config.optim, tc.steps, param_shapes)
    abstract, boxed = abstract_state(method, optimizer, tc.seed, ema)
    shardings = state_shardings(abstract, boxed, optimizer, mesh)
    schedule = schedule_from_config(config.optim, tc.steps)
    step_fn = make_train_step(method, optimizer, tc.get("accum_steps", 1), tc.get("ema_decay", 0.0),
                              tc.get("skip_nonfinite", False), schedule)
    data_sharding = batch_sharding(mesh)
    shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if tc.batch_size % (shards * tc.get("accum_steps", 1)):
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the {shards} batch shards of the "
                         f"mesh (data x fsdp) times train.accum_steps={tc.get('accum_steps', 1)}")
    jitted = jax.jit(step_fn, in_shardings=(shardings, {k: data_sharding for k in method.batch_fields}),
                     out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    return Run(config, method, mesh, optimizer, abstract, shardings, data_sharding, jitted, schedule)


def train(config: ml_collections.ConfigDict, workdir: str | Path, method: Method | None = None
          ) -> dict[str, float]:
    """Train to `config.train.steps`, resuming from `workdir` if it holds checkpoints; returns the
    last logged metrics (including evaluations). Raises `Preempted` after checkpointing on SIGTERM
    (from the start of this call: a notice during setup stops after the first step)."""
    dist = config.get("distributed", ml_collections.ConfigDict())
    with PreemptionWatcher() as preemption, HangWatchdog(dist.get("hang_timeout_s", 0.0), _which_process) as watchdog:
        return _train(config, Path(workdir), method, preemption, watchdog)


def _train(config: ml_collections.ConfigDict, workdir: Path, method: Method | None,
           preemption: PreemptionWatcher, watchdog: HangWatchdog) -> dict[str, float]:
    distributed.initialize(config.get("distributed", ml_collections.ConfigDict()))
    primary = jax.process_index() == 0
    if primary:
        check_workdir(workdir)
        save_config(config, workdir)
    run = setup_run(config, method=method)
    if primary:
        save_model_config(run.method.model, workdir)
    tc = config.train
    errors = RecordErrors(config.data.get("on_error", "raise"), config.data.get("max_skip_fraction", 0.01))
    iterator = run.iterator(errors)
    checkpointer = Checkpointer(workdir, tc.get("keep_checkpoints", 3), tc.get("async_checkpoints", True))
    start = checkpointer.latest_valid_step()
    if start is None:
        log.info("no checkpoint under %s: starting at step 0", checkpointer.directory)
        state, start = run.init_state(), 0
    else:
        log.info("resuming from %s at step %d", checkpointer.directory, start)
        state = checkpointer.restore(start, abstract_with_shardings(run.abstract, run.shardings), iterator)

    writer = MetricsWriter(workdir, jax.process_index())
    meter = Throughput(tc.batch_size, device_kind=jax.devices()[0].device_kind)
    bar = tqdm.tqdm(total=tc.steps, initial=start, disable=not (primary and tc.get("progress_bar", True)),
                    desc="train", dynamic_ncols=True)
    last: dict[str, float] = {}
    pending = None  # (step, metrics) of the previous step, read one step late so devices stay busy
    config_dict = config.to_dict()
    saved = start
    step = start
    step_fn = None  # compiled ahead of time at the first step: one compile, which also counts the FLOPs
    try:
        with run.context():
            for step in range(start + 1, tc.steps + 1):
                if step_fn is not None:  # the previous step's work is handed over and logged
                    watchdog.beat(f"running step {step}")
                batch = run.global_batch(next(iterator))
                if step_fn is None:
                    step_fn = run.step_fn.lower(state, batch).compile()
                    meter.flops_per_step = _flops(step_fn)
                    watchdog.beat(f"running step {step}, the first")  # arms the watchdog
                state, metrics = step_fn(state, batch)
                errors.check()
                if pending is not None:
                    last = _log(pending, tc, writer, bar, meter, last, errors)
                pending = (step, metrics)
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    last = _log(pending, tc, writer, bar, meter, last, errors, force=True)  # never save NaN
                    pending = None
                    checkpointer.save(step, state, iterator, config_dict)
                    saved = step
                if step < tc.steps and preemption.requested(step):
                    if pending is not None:
                        last = _log(pending, tc, writer, bar, meter, last, errors, force=True)
                    if saved != step:
                        checkpointer.save(step, state, iterator, config_dict)
                    raise Preempted(step, str(checkpointer.directory))
                if tc.get("eval_every") and (step % tc.eval_every == 0 or step == tc.steps):
                    with watchdog.paused():
                        last = {**last, **_evaluate(run.method, state, writer, step)}
            if pending is not None:
                last = _log(pending, tc, writer, bar, meter, last, errors, force=True)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() > 1:
            raise PeerFailedError(step, e) from e
        raise
    finally:
        try:
            # A save already started holds a good state: let it finish whatever stopped the loop.
            checkpointer.wait()
        finally:
            checkpointer.close()
            iterator.close()  # stops grain's worker processes
            bar.close()
            writer.close()
    return last


def _which_process() -> str:
    return f"This is process {jax.process_index()} of {jax.process_count()}."


def _flops(compiled) -> float:
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # cost analysis is optional on some backends; MFU is then not reported
        log.info("no FLOP count for this backend (%s); MFU will not be reported", e)
        return 0.0
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _log(pending, tc, writer, bar, meter, last, errors: RecordErrors, force: bool = False) -> dict[str, float]:
    step, metrics = pending
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    if values.get("nonfinite") and not tc.get("skip_nonfinite", False):
        raise NonFiniteLossError(f"loss or gradients became non-finite at step {step} (loss={values['loss']}); "
                                 "the last checkpoint is kept. Set train.skip_nonfinite=True to skip such "
                                 "updates instead")
    meter.tick(step)
    bar.update(step - bar.n)
    if force or step % tc.get("log_every", 10) == 0:
        values.update(meter.summary())
        values.update(errors.metrics())
        writer.write_scalars(step, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", **({"ex/s": f"{values['examples_per_sec']:.0f}"}
                                                        if "examples_per_sec" in values else {}))
        return values
    return last


def _evaluate(method, state, writer, step) -> dict[str, float]:
    results = {}
    for name, evaluator in method.evaluators.items():
        for key, value in evaluator(state.params, state.extras).items():
            results[f"eval/{name}/{key}"] = float(value)
    if results:
        writer.write_scalars(step, results)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
    return results
