"""The SUPERB protocol: every task trains on SUPERB-lite tiny; metrics; the feature cache; errors."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score

import speechssl
from downstream.benchmark import benchmark
from downstream.heads import ctc_greedy_decode, mean_pool
from downstream.task import get_task, list_tasks
from speechssl.bootstrap import read_outcomes
from speechssl.data.corpora import corpus_manifest, corpus_resource
from speechssl.errors import ConfigError
from speechssl.feature_cache import FeatureCache, upstream_fingerprint
from speechssl.registry import get_entry
from speechssl.trainer import TrainerConfig

# heads small enough for a few CPU seconds (the tasks' defaults are SUPERB's sizes)
TINY_TASK_OPTIONS = {"asv": {"channels": 32, "embedding": 32}, "asr": {"hidden": 32}, "sf": {"hidden": 32},
                     "sd": {"hidden": 32}}
FEW_STEPS = TrainerConfig(max_steps=6, warmup_steps=2, lr=1e-3, batch_seconds=20, save_every=3, log_every=3)


def rows(root, task):
    return {s: corpus_manifest("superb_lite", root, task, s) for s in get_task(task).splits}


def resources(root, task):
    return {name: corpus_resource("superb_lite", root, name) for name in get_task(task).resources}


class CountingUpstream:
    """Wraps an upstream's forward to count the utterances it computes."""

    def __init__(self, model):
        self.utterances = 0
        original = model.encode

        def encode(wavs, wav_lens):
            self.utterances += wavs.shape[0]
            return original(wavs, wav_lens)

        model.encode = encode


@pytest.mark.parametrize("task", list_tasks())
def test_every_task_trains_and_reports(task, superb_lite_tiny, tmp_path):
    upstream = speechssl.load_upstream("fbank")
    data, needs = rows(superb_lite_tiny, task), resources(superb_lite_tiny, task)
    results = benchmark(upstream, get_task(task, **TINY_TASK_OPTIONS.get(task, {})), data, FEW_STEPS,
                        tmp_path / "run", corpus="superb_lite", cache_dir=tmp_path / "cache", resources=needs)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    spec = get_task(task)
    spec.prepare(frame_rate=upstream.frame_rate, resources=needs)
    assert saved == results and saved["kind"] == "benchmark" and saved["step"] == (6 if spec.trains_head else 0)
    metric = spec.metric
    assert results["metrics"] == {m: info.as_json() for m, info in spec.metrics.items()}
    assert set(results["test"]) == set(spec.metrics) and results["order"] == spec.order
    assert math.isfinite(results["test"][metric]) and results["chance"] is not None
    assert (results["init"], results["init_seed"]) == ("pretrained", None)
    # every scored test item's outcome (an utterance, a trial, a query): the corpus metrics again, exactly,
    # and intervals around them
    ids, outcomes = read_outcomes(tmp_path / "run" / results["test_outcomes"])
    assert ids == spec.outcome_ids(data["test"]) if task != "qbe" else len(ids) == len(outcomes) > 0
    assert set(results["test_interval"]) == set(results["test"])
    for name, value in results["test"].items():
        assert spec.metric_from_outcomes(outcomes, name) == pytest.approx(value, abs=1e-12)
        low, high = results["test_interval"][name]
        assert low - 1e-9 <= value <= high + 1e-9
    if not spec.trains_head:
        return
    assert results["layer_weights"] == [1.0]  # fbank: one hidden state
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(f"dev_{metric}" in line for line in lines) == ("dev" in spec.splits)


def test_cache_means_no_upstream_call_after_the_first_pass(superb_lite_tiny, tmp_path):
    upstream = speechssl.load_upstream("mfcc")
    counter = CountingUpstream(upstream)
    data = rows(superb_lite_tiny, "ks")
    total = sum(len(v) for v in data.values())
    cfg = TrainerConfig(**{**FEW_STEPS.__dict__, "max_steps": 30, "batch_seconds": 8})  # several epochs
    benchmark(upstream, "ks", data, cfg, tmp_path / "a", corpus="superb_lite", cache_dir=tmp_path / "cache")
    assert counter.utterances == total  # each utterance once: the epochs read the cache
    benchmark(upstream, "ks", data, FEW_STEPS, tmp_path / "b", corpus="superb_lite", cache_dir=tmp_path / "cache")
    assert counter.utterances == total  # a second run (a sweep) computes nothing
    fresh = speechssl.load_upstream("mfcc", num_ceps=12)  # another config: another cache
    other = CountingUpstream(fresh)
    benchmark(fresh, "ks", data, FEW_STEPS, tmp_path / "c", corpus="superb_lite", cache_dir=tmp_path / "cache")
    assert other.utterances == total


def test_cached_features_equal_the_upstream(superb_lite_tiny, tmp_path):
    upstream = speechssl.load_upstream("fbank")
    data = rows(superb_lite_tiny, "ks")["dev"][:3]
    cache = FeatureCache(tmp_path, upstream, "x", dtype=torch.float32)
    assert cache.fill(data) == 3 and cache.fill(data) == 0
    for row in data:
        wav = speechssl.load_audio(row["path"])
        torch.testing.assert_close(cache.load(row["id"])[0], upstream(wav).hidden_states[0][0], atol=1e-5, rtol=0)


def test_same_ids_from_other_audio_are_computed_again(superb_lite_tiny, tmp_path):
    """SUPERB-lite tiny and small share utterance ids: a cache must not hand one's features to the other."""
    upstream = speechssl.load_upstream("fbank")
    data = rows(superb_lite_tiny, "ks")["dev"][:2]
    elsewhere = tmp_path / "other_corpus"
    elsewhere.mkdir()
    other = []
    for row, source in zip(data, rows(superb_lite_tiny, "ks")["test"][:2]):  # other audio under the same ids
        shutil.copy(source["path"], elsewhere / Path(source["path"]).name)
        other.append({**row, "path": elsewhere / Path(source["path"]).name, "num_samples": source["num_samples"]})
    cache = FeatureCache(tmp_path / "cache", upstream, "superb_lite/ks", dtype=torch.float32)
    assert cache.fill(data) == 2 and cache.fill(other) == 2 and cache.fill(other) == 0
    for row in other:
        expected = upstream(speechssl.load_audio(row["path"])).hidden_states[0][0]
        torch.testing.assert_close(cache.load(row["id"])[0], expected, atol=1e-5, rtol=0)
    # the same file written again (a corpus made anew in place) is computed again too
    sf.write(other[0]["path"], 0.5 * speechssl.load_audio(other[0]["path"]).numpy(), 16000)
    reopened = FeatureCache(tmp_path / "cache", upstream, "superb_lite/ks", dtype=torch.float32)
    assert reopened.fill(other) == 1


def test_missing_audio_of_a_row_is_named(superb_lite_tiny, tmp_path):
    row = {**rows(superb_lite_tiny, "ks")["dev"][0], "path": tmp_path / "gone.wav"}
    cache = FeatureCache(tmp_path / "cache", speechssl.load_upstream("fbank"), "x")
    with pytest.raises(speechssl.AudioError, match=r"gone.wav: cannot read .*utterance ks-dev-"):
        cache.fill([row])


def test_a_clip_shorter_than_the_receptive_field_is_named_before_any_work(superb_lite_tiny, tmp_path):
    model = speechssl.load_upstream("fbank")
    counter = CountingUpstream(model)
    data = rows(superb_lite_tiny, "ks")["dev"][:3]
    data[1] = {**data[1], "num_samples": 100}
    with pytest.raises(speechssl.AudioError, match=rf"1 utterance\(s\) shorter than fbank's receptive field of "
                                                    rf"400 samples, e.g. {data[1]['path']} \(100 samples\)"):
        FeatureCache(tmp_path, model, "x").fill(data)
    assert counter.utterances == 0


def test_cli_refuses_bad_cache_dtype_and_device_before_any_work(superb_lite_tiny, tmp_path):
    for key, message in [("cache.dtype=bf16", "cache.dtype='bf16'; expected one of float16, float32"),
                         ("device=gpu", "device='gpu': not a device"),
                         ("init=fresh", "init='fresh'; expected one of pretrained, random"),
                         ("init=random", "init=random: upstream 'fbank' has no weights")]:
        run = subprocess.run(
            [sys.executable, "-m", "speechssl.cli", "benchmark", "upstream=fbank", "task=ks",
             f"data.root={superb_lite_tiny}", key, f"hydra.run.dir={tmp_path}/run", f"cache.dir={tmp_path}/cache"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert not (tmp_path / "cache").exists()


def test_fine_tuning_runs_the_upstream(superb_lite_tiny, tmp_path):
    upstream = speechssl.load_upstream("fbank")
    counter = CountingUpstream(upstream)
    benchmark(
        upstream, "ks", rows(superb_lite_tiny, "ks"), FEW_STEPS, tmp_path / "run",
        corpus="superb_lite", cache_dir=tmp_path / "cache", trainable=True,
    )
    assert counter.utterances > 0 and not (tmp_path / "cache").exists()


def test_classification_metric_matches_sklearn():
    task = get_task("ks")
    train = [{"id": str(i), "label": lab} for i, lab in enumerate("aabbc")]
    task.fit(train)
    test = [{"id": "t", "label": lab} for lab in "abcab"] + [{"id": "u", "label": "z"}]  # z: unseen
    refs = task.references(test)
    preds = [(0,), (1,), (1,), (0,), (1,), (0,)]
    ours = task.score(preds, refs)["accuracy"]
    assert ours == pytest.approx(accuracy_score([r[0] for r in refs], [p[0] for p in preds]))
    assert task.outcomes(preds, refs) == [{"correct": c} for c in (1, 1, 0, 1, 1, 0)]
    assert task.metric_from_outcomes(task.outcomes(preds, refs)) == ours
    assert refs[-1] == (-1,)
    assert task.chance(train, test) == pytest.approx(2 / 6)  # "a" is the first most common


def test_intent_needs_all_three_slots():
    task = get_task("ic")
    rows_ = [{"id": "1", "action": "on", "object": "lights", "location": "kitchen"},
             {"id": "2", "action": "off", "object": "music", "location": "none"}]
    task.fit(rows_)
    refs = task.references(rows_)
    assert task.score([refs[0], (refs[1][0], refs[1][1], 1 - refs[1][2])], refs)["accuracy"] == 0.5


def test_ctc_decoding_and_error_rates_match_jiwer():
    # frames: a a <b> a b b <b>  -> "a a b"
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 2]])
    log_probs = torch.nn.functional.one_hot(ids, 3).float().log()
    assert ctc_greedy_decode(log_probs, torch.tensor([7])) == [[1, 1, 2]]  # the 8th frame is padding
    pr = get_task("pr")
    pr.fit([{"id": "x", "phones": "a b c"}])
    refs, hyps = ["a b c", "b c"], ["a c", "b c a"]
    assert pr.score(hyps, refs)["per"] == pytest.approx(jiwer.wer(refs, hyps)) == pytest.approx(2 / 5)
    assert pr.outcomes(hyps, refs) == [{"phone_errors": 1, "phones": 3}, {"phone_errors": 1, "phones": 2}]
    assert pr.metric_from_outcomes(pr.outcomes(hyps, refs)) == jiwer.wer(refs, hyps)
    asr = get_task("asr")
    asr.fit([{"id": "x", "text": "hello world"}])
    tokens = asr.tokens({"text": "Hello  World"})
    assert asr.join(tokens) == "hello world" and "|" in tokens
    assert asr.score(["hello word"], ["hello world"])["wer"] == pytest.approx(0.5)
    refs, hyps = ["hello world", "the cat sat", "a b"], ["hello word", "the the cat", ""]
    outcomes = asr.outcomes(hyps, refs)
    for row, ref, hyp in zip(outcomes, refs, hyps):  # per utterance: jiwer's counts of that one pair
        words, chars = jiwer.process_words(ref, hyp), jiwer.process_characters(ref, hyp)
        assert row == {"word_errors": words.substitutions + words.deletions + words.insertions,
                       "words": len(ref.split()),
                       "char_errors": chars.substitutions + chars.deletions + chars.insertions, "chars": len(ref)}
    assert asr.metric_from_outcomes(outcomes) == jiwer.wer(refs, hyps) == asr.score(hyps, refs)["wer"]
    assert asr.metric_from_outcomes(outcomes, "cer") == jiwer.cer(refs, hyps)


def test_mean_pool_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(x, torch.tensor([2])).item() == 2.0


def test_task_without_labels_in_corpus(superb_lite_tiny, tmp_path):
    (tmp_path / "pr").mkdir()
    shutil.copy(superb_lite_tiny / "pr" / "train.tsv", tmp_path / "pr" / "train.tsv")
    with pytest.raises(ConfigError, match="corpus 'superb_lite' has no labels for task 'ks'; it provides: pr"):
        corpus_manifest("superb_lite", tmp_path, "ks", "train")
    with pytest.raises(ConfigError, match="pr/dev.tsv: no such manifest .corpus 'superb_lite', task 'pr' has: train"):
        corpus_manifest("superb_lite", tmp_path, "pr", "dev")
    ks_rows = rows(superb_lite_tiny, "ks")
    with pytest.raises(ConfigError, match=r"task 'er' needs label column\(s\) emotion"):
        benchmark(speechssl.load_upstream("fbank"), "er", ks_rows, FEW_STEPS, tmp_path / "r",
                  corpus="superb_lite", cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown task 'kws'; known: asr, asv, er, ic, ks, pr, qbe, sd, sf, sid"):
        get_task("kws")
    assert set(list_tasks()) >= {"asr", "er", "ic", "ks", "pr", "sid"}


def test_cli_grid_chooses_the_rate_on_dev_and_reports(superb_lite_tiny, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "speechssl.cli", "benchmark", "upstream=fbank", "task=ks",
         f"data.root={superb_lite_tiny}", "optim.grid=[1e-2,1e-3]", "trainer.max_steps=4", "trainer.save_every=2",
         f"cache.dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    grid = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert [r["lr"] for r in grid["runs"]] == [1e-3, 1e-2]  # low to high
    best = max(grid["runs"], key=lambda r: r["dev"])  # the first of ties
    assert grid["chosen_lr"] == best["lr"] and f"lr {best['lr']:g} chosen on dev from 0.001: " in run.stdout
    for r in grid["runs"]:
        saved = json.loads((tmp_path / "run" / f"lr{r['lr']:g}" / "results.json").read_text())
        assert saved["lr"] == r["lr"] and saved["dev"]["accuracy"] == r["dev"]
    run = subprocess.run(
        [sys.executable, "-m", "speechssl.cli", "report", f"runs={tmp_path}/run", f"hydra.run.dir={tmp_path}/r"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "KS accuracy ↑" in run.stdout
    report = (tmp_path / "run" / "report" / "README.md").read_text()
    assert f"{best['lr']:g}" in report  # the sweep table names the rates, the chosen one marked


def test_run_folder_of_another_checkpoint_is_refused(superb_lite_tiny, tmp_path):
    data = rows(superb_lite_tiny, "ks")
    benchmark(speechssl.load_upstream("mfcc"), "ks", data, FEW_STEPS, tmp_path / "run", corpus="superb_lite",
              cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="holds a benchmark of another setup"):
        benchmark(speechssl.load_upstream("mfcc", num_ceps=12), "ks", data, FEW_STEPS, tmp_path / "run",
                  corpus="superb_lite", cache_dir=tmp_path / "cache")


def test_upstream_with_states_of_two_sizes(superb_lite_tiny, tmp_path):
    from speechssl.registry import get_entry

    apc = speechssl.build_upstream("apc", **get_entry("apc").tiny).eval()  # 80-d input, 64-d layers
    results = benchmark(apc, "ks", rows(superb_lite_tiny, "ks"), FEW_STEPS, tmp_path / "run", corpus="superb_lite",
                        cache_dir=tmp_path / "cache")
    assert results["layer_weights"][0] == 0.0 and sum(results["layer_weights"]) == pytest.approx(1.0)


def test_normalising_featurizer_uses_training_set_statistics(superb_lite_tiny, tmp_path):
    """The statistics are those of every valid training frame, saved with the head, and the head sees unit scale."""
    from downstream.benchmark import CachedFeatures, feature_statistics

    apc = speechssl.build_upstream("apc", **get_entry("apc").tiny).eval()
    data = rows(superb_lite_tiny, "ks")
    benchmark(apc, "ks", data, FEW_STEPS, tmp_path / "run", corpus="superb_lite", cache_dir=tmp_path / "cache",
              cache_dtype=torch.float32, normalize=True)
    cache = FeatureCache(tmp_path / "cache", apc, "superb_lite/ks", dtype=torch.float32)
    frames = torch.cat([torch.stack(cache.load(r["id"])[1:]) for r in data["train"]], dim=1)  # (L, sum T, D)
    saved = load_file(tmp_path / "run" / "best" / "train.safetensors")
    torch.testing.assert_close(saved["featurizer.means"], frames.mean(dim=1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(saved["featurizer.stds"], frames.std(dim=1, unbiased=False), atol=1e-4, rtol=1e-4)
    task = get_task("ks")
    task.fit(data["train"])
    means, stds = feature_statistics(CachedFeatures(data["train"], cache, task), [1, 2])
    standardised = (frames - means[:, None]) / stds[:, None]
    assert standardised.mean(dim=1).abs().max() < 1e-3 and (standardised.std(dim=1) - 1).abs().max() < 1e-2
    off = benchmark(apc, "ks", data, FEW_STEPS, tmp_path / "raw", corpus="superb_lite", cache_dir=tmp_path / "cache",
                    cache_dtype=torch.float32)  # off by default
    assert "featurizer.means" not in load_file(tmp_path / "raw" / "best" / "train.safetensors") and off["step"] == 6


def test_asr_can_select_and_report_cer(superb_lite_tiny, tmp_path):
    results = benchmark(speechssl.load_upstream("fbank"), get_task("asr", metric="cer"), rows(superb_lite_tiny, "asr"),
                        FEW_STEPS, tmp_path / "run", corpus="superb_lite", cache_dir=tmp_path / "cache")
    assert results["metric"] == "cer" and "wer" in results["test"] and "cer" in results["test_interval"]
    assert results["metrics"]["cer"] == {"label": "CER", "higher_is_better": False, "unit": "%"}
    with pytest.raises(ConfigError, match="task 'asr' has no metric 'bleu'; it has wer, cer"):
        get_task("asr", metric="bleu")
    with pytest.raises(ConfigError, match="task 'asr': unknown option.s. metrc; known: hidden, metric"):
        get_task("asr", metrc="cer")


def test_cli_random_init_control(superb_lite_tiny, tmp_path):
    """init=random: apc_tiny's architecture untrained, the weights those of the seed, into a folder of its own."""
    from speechssl.registry import random_upstream

    usage = subprocess.run([sys.executable, "-m", "speechssl.cli", "benchmark", "--help"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "init=random" in usage.stdout and "init_seed" in usage.stdout
    run = subprocess.run(
        [sys.executable, "-m", "speechssl.cli", "benchmark", "upstream=apc_tiny", "init=random", "init_seed=1",
         "task=ks", f"data.root={superb_lite_tiny}", "optim.lr=1e-3", "trainer.max_steps=2", "trainer.save_every=2",
         f"cache.dir={tmp_path}/cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    run_dir = tmp_path / "runs" / "benchmark" / "apc_random_init_seed1" / "ks" / "lr0.001"  # not apc's folder
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["init"], results["init_seed"], results["upstream"]) == ("random", 1, "apc")
    identity = json.loads((run_dir / "benchmark.json").read_text())
    assert identity["init"] == "random"
    expected = random_upstream("apc", seed=1, hidden_size=128, num_layers=3)  # configs/upstream/apc_tiny.yaml
    assert identity["weights"] == upstream_fingerprint(expected, torch.float32)  # the same weights in any process
    assert identity["weights"] != upstream_fingerprint(random_upstream("apc", seed=0, hidden_size=128, num_layers=3),
                                                       torch.float32)


def test_bilstm_on_a_padded_batch_equals_torchs_on_packed_sequences():
    from downstream.heads import BiLSTM

    torch.manual_seed(0)
    ours, theirs = BiLSTM(6, 5, 2), torch.nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for k in range(2):
            for mine, suffix in ((ours.forward_layers[k], ""), (ours.backward_layers[k], "_reverse")):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(mine, f"{name}_l0").copy_(getattr(theirs, f"{name}_l{k}{suffix}"))
    lengths = torch.tensor([9, 4, 7])
    x = torch.randn(3, 9, 6)
    x[1, 4:] = 5.0  # padding content must not reach a valid frame
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(theirs(packed)[0], batch_first=True)
    got = ours(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[b, :n], expected[b, :n], atol=1e-6, rtol=1e-5)


def test_a_per_utterance_output_is_cached_and_trains_utterance_heads(superb_lite_tiny, tmp_path):
    """DeLoRes's pooled embedding: stored by the feature cache, the one input of featurizer.source=embedding."""
    upstream = speechssl.build_upstream("delores", **get_entry("delores").tiny).eval()
    data = rows(superb_lite_tiny, "ks")
    results = benchmark(upstream, "ks", data, FEW_STEPS, tmp_path / "run", corpus="superb_lite",
                        cache_dir=tmp_path / "cache", source="embedding")  # fmt: skip
    assert results["source"] == "embedding" and results["layer_weights"] == [1.0] and results["step"] == 6
    cache = FeatureCache(tmp_path / "cache", upstream, "superb_lite/ks")
    row = data["test"][0]
    with torch.inference_mode():
        expected = upstream(speechssl.load_audio(row["path"])).extra["embedding"][0]
    torch.testing.assert_close(cache.load_extra(row["id"], "embedding"), expected, atol=2e-3, rtol=2e-3)  # float16
    with pytest.raises(ConfigError, match="serves frozen utterance-level tasks"):
        benchmark(upstream, "pr", rows(superb_lite_tiny, "pr"), FEW_STEPS, tmp_path / "pr", corpus="superb_lite",
                  cache_dir=tmp_path / "cache", source="embedding")  # fmt: skip
    with pytest.raises(ConfigError, match="has no such output; it has hidden_states$"):
        benchmark(speechssl.load_upstream("fbank"), "ks", data, FEW_STEPS, tmp_path / "fb", corpus="superb_lite",
                  cache_dir=tmp_path / "cache", source="embedding")  # fmt: skip
