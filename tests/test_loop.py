"""The training loop's extension points: callbacks (with state that survives a resume), a stopping
rule, the objective and optimizer registries, and TensorBoard logging. A change to the loop is
a callback or a registry entry written in the user's own code, as these tests do."""

import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import QUIET, TINY, SignalAt

from bnonly.config import TrainConfig
from bnonly.rundir import RunDir
from bnonly.training import OBJECTIVES, OPTIMIZERS, Callback, Interrupted, train


def tiny(tmp_path, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), **kw})


def finals(summary):
    return torch.load(RunDir(summary["run_dir"]).final_weights)


class Recorder(Callback):
    """Records the hooks it sees; keeps a running sum of the losses as resumable state."""

    name = "recorder"

    def __init__(self):
        self.events, self.loss_sum, self.steps_seen = [], torch.zeros((), dtype=torch.float64), 0

    def on_fit_start(self, loop):
        self.events.append(("start", loop.step))

    def on_step_end(self, loop, out):
        self.loss_sum += out.loss.double().cpu()
        self.steps_seen += 1
        if loop.last_row is not None and loop.last_row["step"] == loop.step:
            self.events.append(("row", loop.step))  # runs after Metrics: sees this step's row

    def on_fit_end(self, loop):
        self.events.append(("end", loop.step))

    def close(self, loop):
        self.events.append(("close", loop.step))

    def state_dict(self, loop):
        return dict(loss_sum=self.loss_sum.clone(), steps_seen=self.steps_seen)

    def load_state_dict(self, state, loop):
        self.loss_sum, self.steps_seen = state["loss_sum"], state["steps_seen"]


def test_callbacks_see_every_step_and_each_new_metrics_row(tmp_path):
    rec = Recorder()
    summary = train(tiny(tmp_path), callbacks=[rec], **QUIET)
    assert summary["steps"] == 16 and rec.steps_seen == 16
    assert rec.events == [("start", 0), ("row", 8), ("row", 16), ("end", 16), ("close", 16)]


def test_a_callbacks_state_is_checkpointed_and_restored_exactly(tmp_path):
    straight = Recorder()
    train(tiny(tmp_path / "a"), callbacks=[straight], **QUIET)
    cfg = tiny(tmp_path / "b")
    first = Recorder()
    with pytest.raises(Interrupted, match="SIGINT at step 5/16"):
        train(cfg, callbacks=[first, SignalAt({5})], **QUIET)
    state, _ = RunDir(tmp_path / "b" / "runs" / cfg.run_name).load_checkpoint()
    assert state["callbacks"]["recorder"]["steps_seen"] == 5
    second = Recorder()
    train(cfg, callbacks=[second], **QUIET)
    assert second.events[0] == ("start", 5) and second.steps_seen == 16
    assert torch.equal(second.loss_sum, straight.loss_sum)  # bit for bit, across the resume


class StopWhenLossBelow(Callback):
    """A stopping rule: end the run as finished once the training loss is low enough."""

    def __init__(self, threshold):
        self.threshold = threshold

    def on_step_end(self, loop, out):
        if loop.step >= 3 and float(out.loss) < self.threshold:
            loop.finish(f"training loss below {self.threshold} at step {loop.step}")


def test_a_stopping_rule_ends_the_run_as_done_with_a_final_evaluation(tmp_path):
    summary = train(tiny(tmp_path, epochs=4, milestones=(), schedule_epochs=4), callbacks=[StopWhenLossBelow(10.0)],
                    **QUIET)
    assert summary["status"] == "done" and summary["steps"] == 3
    assert summary["finished_early"] == "training loss below 10.0 at step 3"
    rows = RunDir(summary["run_dir"]).read_metrics()
    assert [r["step"] for r in rows] == [3] and summary["test_acc"] == rows[-1]["test_acc"]


def test_a_registered_objective_is_what_the_step_minimizes(tmp_path):
    calls = []

    @OBJECTIVES.register("scaled_ce_test", help="cross-entropy times 3 (a test)")
    def scaled(logits, labels):
        calls.append(logits.dtype)
        return 3 * F.cross_entropy(logits, labels)

    try:
        plain = train(tiny(tmp_path / "a"), **QUIET)
        scaled_run = train(tiny(tmp_path / "b", loss="scaled_ce_test"), **QUIET)
    finally:
        OBJECTIVES.unregister("scaled_ce_test")
    assert len(calls) == 16 and set(calls) == {torch.float32}
    assert plain["run_id"] != scaled_run["run_id"]  # the loss is part of the experiment
    rows_a, rows_b = (RunDir(s["run_dir"]).read_metrics() for s in (plain, scaled_run))
    # The first epoch's training loss is reported as the objective's value: 3x at the same start.
    assert rows_b[0]["train_loss"] == pytest.approx(3 * rows_a[0]["train_loss"], rel=0.2)
    assert not all(torch.equal(finals(plain)[k], finals(scaled_run)[k]) for k in finals(plain))


def test_adamw_trains_the_same_entries_differently(tmp_path):
    sgd, adamw = (train(tiny(tmp_path / name, optimizer=name, lr=0.01), **QUIET) for name in ("sgd", "adamw"))
    init = torch.load(RunDir(sgd["run_dir"]).init_weights)
    a, b = finals(sgd), finals(adamw)
    moved = lambda f: {k for k in f if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                       and not torch.equal(f[k], init[k])}
    assert moved(a) == moved(b) and moved(a)  # the same tensors train (BN γ, β) ...
    assert all(k.endswith(("bn.weight", "bn.bias", "bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias",
                           "1.weight", "1.bias")) for k in moved(a))
    assert not torch.equal(a["bn.weight"], b["bn.weight"])  # ... by different rules
    assert sorted(OPTIMIZERS.names()) == ["adamw", "sgd"]


def test_tensorboard_logs_every_metrics_row_beside_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train(tiny(tmp_path, log="tensorboard"), **QUIET)
    run = RunDir(summary["run_dir"])
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    rows = run.read_metrics()
    logged = events.Scalars("test_acc")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["test_acc"] for r in rows])
    assert summary["run_id"] == tiny(tmp_path).run_id  # logging is not part of the experiment


def test_sigterm_and_sigusr2_stop_like_sigint(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        with pytest.raises(Interrupted) as e:
            train(tiny(tmp_path / sig.name), callbacks=[SignalAt({3}, sig)], **QUIET)
        assert e.value.signal_name == sig.name and "at step 3/16" in str(e.value)


def test_evaluation_and_saving_do_not_count_as_training_time(tmp_path, monkeypatch):
    import time

    from bnonly.training import callbacks

    original = callbacks.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(callbacks, "evaluate", slow_evaluate)
    summary = train(tiny(tmp_path), **QUIET)  # 2 evaluations: 1 s of sleeping, outside training time
    rows = RunDir(summary["run_dir"]).read_metrics()
    train_seconds = summary["steps"] * TINY["batch_size"] / summary["images_per_second"]
    assert summary["wall_seconds"] - train_seconds >= 0.9
    assert rows[0]["wall_seconds"] < rows[1]["wall_seconds"] - 0.5  # each row's wall time is before its evaluation
