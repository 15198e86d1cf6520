"""The diagnosis while training and over the whole run, on synthetic logged records (no training but one
tiny run)."""

import io
import json

import pytest

import betavae
from betavae.training.diagnostics import LiveDiagnosis, diagnose_run, format_diagnosis, run_episodes
from betavae.training.logging import TrainingLog, read_metrics

BASELINE = 740.0  # reconstruction NLL of the decoder that ignores z
SETTINGS = dict(weight="β = 4", collapse_threshold=0.1, baseline_reconstruction=BASELINE, dataset_size=737280)


def _record(step, kl_per_dim, reconstruction):
    return {"step": step, "kl": sum(kl_per_dim), "kl_per_dim": list(kl_per_dim), "reconstruction": reconstruction,
            "images_per_second": 1000.0}


HEALTHY = ([2.0, 2.0, 2.0, 2.0], 200.0)
COLLAPSED = ([0.005, 0.005, 0.005, 0.005], 739.0)


def _collapse_100_to_700(last=2000):
    """A run whose KL sits near 0, reconstruction at the z-free level, from step 100 to 700, then recovers."""
    return [_record(s, *(COLLAPSED if s <= 700 else HEALTHY)) for s in range(100, last + 1, 100)]


def _events(monitor, records):
    """(record step, event) for every event, in order."""
    return [(r["step"], e) for r in records for e in monitor.observe(r)]


def test_a_collapse_is_announced_once_when_it_starts_and_once_when_it_ends():
    records = _collapse_100_to_700()
    events = _events(LiveDiagnosis(**SETTINGS), records)
    collapse = [(at, e) for at, e in events if e["kind"] == "kl_collapse"]
    assert [(at, e["state"], e["step"]) for at, e in collapse] == [(200, "started", 100), (900, "ended", 800)]
    assert "β = 4 may be too high, or the model too small" in collapse[0][1]["message"]
    assert "collapsed from step 100 to step 700" in collapse[1][1]["message"]
    assert [e["kind"] for _, e in events] == ["kl_collapse", "kl_collapse"]  # dims never active before: no dim events

    episodes = run_episodes(records, **SETTINGS)
    assert len(episodes) == 1
    (episode,) = episodes
    assert (episode["kind"], episode["start"], episode["end"], episode["ongoing"]) == ("kl_collapse", 100, 700, False)
    assert "from step 100 to step 700, then recovered" in episode["text"]


def test_a_collapse_to_the_end_of_the_run_says_so():
    records = [_record(s, *(HEALTHY if s < 500 else COLLAPSED)) for s in range(100, 1001, 100)]
    episodes = [e for e in run_episodes(records, **SETTINGS) if e["kind"] == "kl_collapse"]
    assert len(episodes) == 1 and episodes[0]["ongoing"]
    assert "from step 500 until the end (step 1000)" in episodes[0]["text"]


def test_one_noisy_record_neither_starts_nor_ends_an_episode():
    healthy_with_a_dip = [_record(s, *(COLLAPSED if s == 500 else HEALTHY)) for s in range(100, 1001, 100)]
    monitor = LiveDiagnosis(**SETTINGS)
    assert _events(monitor, healthy_with_a_dip) == []
    assert monitor.episodes() == []

    collapse_with_a_blip = [_record(s, *(HEALTHY if s == 400 else COLLAPSED)) for s in range(100, 1001, 100)]
    events = _events(LiveDiagnosis(**SETTINGS), collapse_with_a_blip)
    assert [(at, e["kind"], e["state"]) for at, e in events] == [(200, "kl_collapse", "started")]


def test_high_kl_says_beta_too_low():
    settings = {**SETTINGS, "weight": "β = 1", "dataset_size": 1000}  # log N = 6.9 nats
    records = [_record(s, [2.0, 2.0, 2.0] if s < 300 else [10.0, 10.0, 10.0], 50.0) for s in range(100, 801, 100)]
    monitor = LiveDiagnosis(**settings)
    events = _events(monitor, records)
    assert [(at, e["kind"], e["state"], e["step"]) for at, e in events] == [(400, "kl_high", "started", 300)]
    assert "β = 1 may be too low" in events[0][1]["message"]
    assert monitor.flags()["kl_high"] == 1 and monitor.flags()["kl_collapsed"] == 0
    (episode,) = monitor.episodes()
    assert episode["ongoing"] and "from step 300 until the end (step 800)" in episode["text"]


def test_high_kl_of_a_factor_vae_does_not_blame_gamma():
    """FactorVAE keeps weight 1 on the KL: a KL above log N is not a sign that γ is too low, live, at the end
    and in the episodes replayed by the report."""
    from betavae.objectives.factor_vae import FactorVAE
    from betavae.report.run_report import run_episodes_of

    objective = FactorVAE(latents=3, gamma=40.0)
    settings = {**SETTINGS, "weight": objective.weight_label(), "dataset_size": 1000,
                "kl_high_advice": objective.kl_high_advice()}
    records = [_record(s, [10.0, 10.0, 10.0], 50.0) for s in range(100, 801, 100)]
    (event,) = [e for _, e in _events(LiveDiagnosis(**settings), records)]
    diagnosis = diagnose_run(records, **settings)
    (finding,) = [f for f in diagnosis["findings"] if f["code"] == "beta_too_low"]
    replayed = run_episodes_of(json.loads(json.dumps(diagnosis)), records)
    for text in (event["message"], finding["text"], diagnosis["episodes"][0]["text"], replayed[0]["text"]):
        assert "weighs the KL by 1" in text and "not that γ is too low" in text
        assert "may be too low" not in text
    # without the objective's advice, the weight named is the one blamed (the β-VAE's wording)
    plain = diagnose_run(records, **{**settings, "kl_high_advice": None})
    assert "γ = 40 may be too low" in plain["episodes"][0]["text"]


def test_a_dim_that_collapses_after_being_active_is_an_event_and_an_episode():
    def kl(step):
        return [2.0, 2.0, 0.01 if 600 <= step <= 900 else 1.0]

    records = [_record(s, kl(s), 200.0) for s in range(100, 1501, 100)]
    monitor = LiveDiagnosis(**SETTINGS)
    events = _events(monitor, records)
    assert [(at, e["state"], e["step"], e["dims"]) for at, e in events] == [
        (700, "started", 600, [2]), (1100, "ended", 1000, [2])]
    assert "z2 collapsed since step 600" in events[0][1]["message"] and "2 of 3 dims active" in events[0][1]["message"]
    (episode,) = monitor.episodes()
    assert (episode["kind"], episode["dims"], episode["start"], episode["end"]) == ("dim_collapse", [2], 600, 900)
    assert "active again from step 1000" in episode["text"]

    def two_fall(step):
        return [2.0] + [1.0 if step < 400 else 0.01] * 2

    still = run_episodes([_record(s, two_fall(s), 200.0) for s in range(100, 801, 100)], **SETTINGS)
    assert [(e["dims"], e["start"], e["ongoing"]) for e in still] == [([1, 2], 400, True)]  # one line for both
    assert "dims z1, z2 collapsed at step 400" in still[0]["text"]
    assert "stayed collapsed to the end" in still[0]["text"]


def test_a_dim_hovering_at_the_threshold_after_its_collapse_is_one_episode():
    """A dim in disuse whose minibatch KL crosses the threshold now and then (here for two records in every
    four, 0.12 against 0.1) stays collapsed: it counts as active again only at twice the threshold."""
    def kl(step):
        if step < 500:
            return [2.0, 1.0]
        return [2.0, 0.12 if (step // 100) % 4 in (0, 1) else 0.05]

    records = [_record(s, kl(s), 200.0) for s in range(100, 3001, 100)]
    monitor = LiveDiagnosis(**SETTINGS)
    events = _events(monitor, records)
    assert [(e["state"], e["step"], e["dims"]) for _, e in events] == [("started", 600, [1])]
    (episode,) = monitor.episodes()
    assert (episode["dims"], episode["start"], episode["ongoing"]) == ([1], 600, True)

    # a dim that never reached twice the threshold was never active: no episode at all
    never = [_record(s, [2.0, 0.12 if (s // 100) % 2 else 0.05], 200.0) for s in range(100, 2001, 100)]
    assert run_episodes(never, **SETTINGS) == []

    # a real return (KL at 0.3 for two records) ends the episode
    back = records + [_record(s, [2.0, 0.3], 200.0) for s in (3100, 3200)]
    (episode,) = run_episodes(back, **SETTINGS)
    assert (episode["start"], episode["end"], episode["active_again"]) == (600, 3000, 3100)


def test_end_diagnosis_describes_the_whole_run_beside_the_last_step():
    diagnosis = diagnose_run(_collapse_100_to_700(), **SETTINGS)
    assert diagnosis["step"] == 2000 and {f["code"] for f in diagnosis["findings"]} == {"ok"}
    assert [e["kind"] for e in diagnosis["episodes"]] == ["kl_collapse"]
    printed = format_diagnosis(diagnosis)
    assert "over the whole run:" in printed and "from step 100 to step 700, then recovered" in printed
    json.dumps(diagnosis)  # written as diagnosis.json
    quiet = diagnose_run([_record(s, *HEALTHY) for s in range(100, 501, 100)], **SETTINGS)
    assert quiet["episodes"] == [] and "no KL collapse" in format_diagnosis(quiet)


class _Writer:
    """Stands in for TensorBoard's SummaryWriter: remembers what it was given."""

    def __init__(self):
        self.scalars, self.texts = [], []

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def add_scalars(self, key, values, step):
        pass

    def add_text(self, key, text, step):
        self.texts.append((key, text, step))

    def close(self):
        pass


def test_training_log_writes_events_to_metrics_tensorboard_and_the_terminal(tmp_path):
    stream = io.StringIO()
    log = TrainingLog(tmp_path, 2000, stream=stream, tensorboard=False, diagnosis=LiveDiagnosis(**SETTINGS))
    log._writer = writer = _Writer()
    for record in _collapse_100_to_700():
        log.write({**record, "active_dims": 0})
    log.close()

    records = read_metrics(tmp_path)
    with_events = {r["step"]: r["events"] for r in records if "events" in r}
    assert sorted(with_events) == [200, 900]
    assert [(e["kind"], e["state"], e["step"]) for e in with_events[200]] == [("kl_collapse", "started", 100)]
    lines = stream.getvalue().splitlines()
    started = lines.index(next(line for line in lines if "KL collapsed since step 100" in line))
    assert lines[started].startswith("betavae: step 200: ") and lines[started - 1].startswith("step 200/2000")
    assert sum("betavae: step" in line for line in lines) == 2
    flags = {step: value for key, value, step in writer.scalars if key == "diagnosis/kl_collapsed"}
    assert sorted(flags) == list(range(100, 2001, 100))  # on every record
    assert [s for s, v in sorted(flags.items()) if v] == list(range(200, 801, 100))
    assert [(key, step) for key, _, step in writer.texts] == [("diagnosis", 200), ("diagnosis", 900)]


def test_a_resumed_log_carries_on_the_episode_in_progress(tmp_path):
    records = _collapse_100_to_700()
    log = TrainingLog(tmp_path, 2000, stream=io.StringIO(), tensorboard=False, diagnosis=LiveDiagnosis(**SETTINGS))
    for record in records[:4]:  # collapsed since step 100, announced at 200; then the run stops at 400
        log.write({**record, "active_dims": 0})
    log.close()
    stream = io.StringIO()
    log = TrainingLog(tmp_path, 2000, 400, stream=stream, tensorboard=False, diagnosis=LiveDiagnosis(**SETTINGS))
    for record in records[4:]:
        log.write({**record, "active_dims": 0})
    log.close()
    events = [(r["step"], e["state"]) for r in read_metrics(tmp_path) for e in r.get("events", [])]
    assert events == [(200, "started"), (900, "ended")]
    assert "collapsed from step 100 to step 700" in stream.getvalue()


def test_a_reconstruction_worse_than_ignoring_z_is_called_worse():
    early = [_record(s, [0.01, 0.01], 2 * BASELINE) for s in (10, 20)]  # a decoder that has not learned the mean yet
    (event,) = _events(LiveDiagnosis(**SETTINGS), early)[-1:]
    assert "100% worse than ignoring the latents" in event[1]["message"]


def test_episodes_of_old_records_without_events_come_from_the_records():
    old = [{k: v for k, v in r.items() if k != "events"} for r in _collapse_100_to_700()]
    assert [e["text"] for e in run_episodes(old, **SETTINGS)] == [e["text"] for e in
                                                                   run_episodes(_collapse_100_to_700(), **SETTINGS)]


def test_persistence_must_be_positive():
    with pytest.raises(ValueError, match="persistence"):
        LiveDiagnosis(**SETTINGS, persistence=0)


def test_training_writes_events_only_when_something_happens(small_npy, tmp_path, monkeypatch):
    """A tiny run: its records carry events exactly where the monitor reports them, and the diagnosis lists the
    episodes; with a monitor that sees collapse everywhere (a huge z-free baseline), the start is in the log."""
    def config(out):
        return betavae.TrainConfig(data=str(small_npy), steps=40, batch_size=16, lr=1e-3, latents=4, log_every=10,
                                   checkpoint_every=40, out=str(tmp_path / out), figures=False)

    import betavae.training.loop as loop

    monkeypatch.setattr(loop, "reconstruction_baseline", lambda *a, **k: 1e9)  # nothing beats it: no collapse
    stream = io.StringIO()
    run = betavae.train(config("run"), stream=stream)
    records = read_metrics(run)
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    inputs = [diagnosis[k] for k in ("weight", "collapse_threshold", "baseline_reconstruction", "dataset_size")]
    expected = run_episodes(records, *inputs)
    assert not any(e["kind"] == "kl_collapse" for e in expected)
    assert diagnosis["episodes"] == json.loads(json.dumps(expected))
    replay = LiveDiagnosis(*inputs)
    assert [r.get("events", []) for r in records] == [replay.observe(r) for r in records]

    monkeypatch.setattr(loop, "reconstruction_baseline", lambda *a, **k: -1.0)  # gain NaN: poor whatever the KL
    monkeypatch.setattr("betavae.training.diagnostics.COLLAPSED_KL", 1e9)  # every KL counts as collapsed
    run = betavae.train(config("collapsed"), stream=stream)
    events = [(r["step"], e["kind"], e["state"]) for r in read_metrics(run) for e in r.get("events", [])]
    assert (20, "kl_collapse", "started") in events
    assert "betavae: step 20: KL collapsed since step 10" in stream.getvalue()
    assert "until the end (step 40)" in json.loads((run / "diagnosis.json").read_text())["episodes"][0]["text"]


def test_the_report_describes_the_run_even_from_an_old_diagnosis(tmp_path):
    from betavae.report.figures import plot_training_curves
    from betavae.report.run_report import _diagnosis_section

    records = _collapse_100_to_700()
    old = diagnose_run(records, **SETTINGS)
    del old["episodes"], old["dataset_size"]  # written before episodes existed: log N gives the data size
    html = _diagnosis_section(old, records)
    assert "Over the whole run" in html and "from step 100 to step 700, then recovered" in html
    quiet = _diagnosis_section(diagnose_run([_record(s, *HEALTHY) for s in range(100, 501, 100)], **SETTINGS), [])
    assert "No KL collapse" in quiet
    plot_training_curves(records, tmp_path / "curves.png", 0.1, episodes=run_episodes(records, **SETTINGS))
    assert (tmp_path / "curves.png").stat().st_size > 0  # the collapse drawn as a shaded span
