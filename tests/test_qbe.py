"""QbE: batched subsequence DTW against dtw-python and a quadratic loop, TWV/MTWV by hand,
and the QUESST 2014 and SUPERB-lite readers on fixtures in their own layouts."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from downstream.qbe import (
    detection_scores,
    maximum_term_weighted_value,
    score_queries,
    standardize_features,
    term_weighted_value,
)
from speechssl.data.corpora import quesst14
from speechssl.data.qbe import superb_lite_qbe
from speechssl.dtw import subsequence_dtw
from speechssl.errors import ConfigError


def padded(lengths, D, generator, fill=0.0):
    """Random features ``(B, max(lengths), D)`` with ``fill`` in the padding, and their lengths."""
    x = torch.randn(len(lengths), max(lengths), D, generator=generator, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[b, n:] = fill
    return x, torch.tensor(lengths)


def loop_distance(q, d, distance, minmax):
    """The recipe of speechssl.dtw written out cell by cell: q (Tq, D), d (Td, D) NumPy arrays."""
    Tq, Td = len(q), len(d)
    cost = np.empty((Tq, Td))
    for i in range(Tq):
        for j in range(Td):
            c = 1 - q[i] @ d[j] / (np.linalg.norm(q[i]) * np.linalg.norm(d[j]))
            cost[i, j] = math.exp(c) - 1 if distance == "cosine_exp" else c
    if minmax:
        low, high = cost.min(1, keepdims=True), cost.max(1, keepdims=True)
        cost = (cost - low) / np.maximum(high - low, 1e-9)
    g = np.full((Tq, Td), np.inf)
    g[0] = cost[0]
    for i in range(1, Tq):
        for j in range(Td):
            moves = [g[i - 1, j - k] for k in (0, 1, 2) if j - k >= 0]
            g[i, j] = cost[i, j] + min(moves)
    return g[-1].min() / Tq


# ---------------------------------------------------------------- DTW


@pytest.mark.parametrize("distance", ["cosine", "cosine_exp"])
@pytest.mark.parametrize("minmax", [True, False])
def test_dtw_matches_a_quadratic_loop(distance, minmax):
    g = torch.Generator().manual_seed(0)
    queries, q_lens = padded([4, 7, 1], 5, g)
    docs, d_lens = padded([9, 3, 14, 6], 5, g)
    ours = subsequence_dtw(queries, q_lens, docs, d_lens, distance=distance, minmax_norm=minmax)
    for q in range(3):
        for n in range(4):
            ref = loop_distance(queries[q, : q_lens[q]].numpy(), docs[n, : d_lens[n]].numpy(), distance, minmax)
            assert abs(float(ours[q, n]) - ref) < 1e-9


def test_dtw_matches_dtw_python_as_s3prl_calls_it():
    dtw = pytest.importorskip("dtw")
    from scipy.spatial import distance

    g = torch.Generator().manual_seed(1)
    queries, q_lens = padded([6, 11, 5], 8, g)
    docs, d_lens = padded([30, 12, 47, 25, 9], 8, g)
    ours = subsequence_dtw(queries.float(), q_lens, docs.float(), d_lens)  # float32, s3prl's defaults
    for q in range(3):
        for n in range(5):
            cost = np.exp(distance.cdist(queries[q, : q_lens[q]], docs[n, : d_lens[n]], "cosine")) - 1
            low, high = cost.min(1)[:, None], cost.max(1)[:, None]
            cost = (cost - low) / np.clip(high - low, 1e-9, np.inf)
            ref = dtw.dtw(x=cost, step_pattern="asymmetric", keep_internals=False, distance_only=False,
                          open_begin=True, open_end=True).normalizedDistance  # fmt: skip
            assert abs(float(ours[q, n]) - ref) < 1e-5


def test_padding_and_blocks_do_not_change_distances():
    g = torch.Generator().manual_seed(2)
    lengths_q, lengths_d = [5, 9, 3, 7], [20, 8, 33, 15, 4, 26]
    queries, q_lens = padded(lengths_q, 6, g)
    docs, d_lens = padded(lengths_d, 6, g)
    reference = subsequence_dtw(queries, q_lens, docs, d_lens)
    garbage_q, _ = padded(lengths_q, 6, torch.Generator().manual_seed(3), fill=float("nan"))
    garbage_d = torch.cat([docs, 1e3 * torch.randn(6, 10, 6, generator=g, dtype=torch.float64)], 1)
    garbage_d[:, :, 0] = torch.where(torch.arange(43)[None] >= d_lens[:, None], torch.nan, garbage_d[:, :, 0])
    garbage_q[:, :, :] = torch.where(torch.arange(9)[None, :, None] < q_lens[:, None, None], queries, garbage_q)
    for max_cells in (2**24, 600, 1):  # one block; groups of queries and blocks of documents; one pair a block
        ours = subsequence_dtw(garbage_q, q_lens, garbage_d, d_lens, max_cells=max_cells)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    # each pair alone, unpadded
    for q in range(4):
        for n in range(6):
            alone = subsequence_dtw(queries[q : q + 1, : q_lens[q]], q_lens[q : q + 1],
                                    docs[n : n + 1, : d_lens[n]], d_lens[n : n + 1])  # fmt: skip
            assert abs(float(alone[0, 0] - reference[q, n])) < 1e-12


@pytest.mark.gpu
def test_dtw_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(6)
    queries, q_lens = padded([5, 9, 3], 16, g)
    docs, d_lens = padded([20, 8, 33, 15], 16, g)
    cpu = subsequence_dtw(queries.float(), q_lens, docs.float(), d_lens)
    cuda = subsequence_dtw(queries.float().cuda(), q_lens.cuda(), docs.float().cuda(), d_lens.cuda(), max_cells=4000)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-5)


def test_dtw_rejects_bad_shapes_and_lengths():
    x, lens = torch.zeros(2, 4, 3), torch.tensor([4, 2])
    with pytest.raises(ValueError, match=r"\(2, 4, 3\) and \(2, 4, 5\)"):
        subsequence_dtw(x, lens, torch.zeros(2, 4, 5), lens)
    with pytest.raises(ValueError, match="query lengths"):
        subsequence_dtw(x, torch.tensor([0, 2]), x, lens)


def test_score_queries_finds_a_query_planted_in_a_document():
    g = torch.Generator().manual_seed(4)
    docs, d_lens = padded([40, 40, 40, 40, 40], 12, g)
    queries = docs[2:3, 10:22].clone() + 0.05 * torch.randn(1, 12, 12, generator=g, dtype=torch.float64)
    scores = score_queries(queries, torch.tensor([12]), docs, d_lens)
    assert int(scores.argmax()) == 2 and float(scores[0, 2]) > 1.5
    torch.testing.assert_close(scores.mean(1), torch.zeros(1, dtype=torch.float64))


def test_detection_scores_standardise_rows_and_zero_short_queries():
    distances = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.4, 0.9]])
    scores = detection_scores(distances, torch.tensor([5, 4]))
    z = -(distances[0] - distances[0].mean()) / distances[0].std(correction=0)
    torch.testing.assert_close(scores[0], z)
    assert scores[1].eq(0).all()  # 4 frames < 5: "too short"


def test_standardize_features_leaves_padding_out_of_the_statistics():
    q, q_lens = torch.tensor([[[1.0], [3.0], [99.0]]]), torch.tensor([2])
    d, d_lens = torch.tensor([[[5.0], [-99.0]]]), torch.tensor([1])
    qs, ds = standardize_features(q, q_lens, d, d_lens)
    std = torch.tensor([1.0, 3.0, 5.0]).std()
    torch.testing.assert_close(qs[0, :2, 0], (torch.tensor([1.0, 3.0]) - 3) / std)
    torch.testing.assert_close(ds[0, :1, 0], (torch.tensor([5.0]) - 3) / std)


# ---------------------------------------------------------------- TWV

# two queries with occurrences, one without (left out of the average), four documents
TOY_SCORES = torch.tensor([[0.9, 0.8, 0.3, 0.1], [0.7, 0.6, 0.5, 0.2], [5.0, 5.0, 5.0, 5.0]])
TOY_TARGETS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)


def test_twv_on_a_toy_detection_list_by_hand():
    # theta = 0.55: q0 detects 0.9 (hit), 0.8 (FA): P_miss 1/2, P_fa 1/2; q1 detects 0.7 (FA), 0.6 (hit):
    # P_miss 0, P_fa 1/3. TWV = 1 - ((1/2 + b/2) + (0 + b/3)) / 2
    for beta in (0.5, 999.9):
        expected = 1 - ((0.5 + beta / 2) + (0 + beta / 3)) / 2
        assert term_weighted_value(TOY_SCORES, TOY_TARGETS, 0.55, beta=beta) == pytest.approx(expected)


def test_mtwv_on_a_toy_detection_list_by_hand():
    # beta 0.5: best at theta = 0.3: q0 detects all but 0.1: P_miss 0, P_fa 1/2; q1 detects 0.7, 0.6, 0.5:
    # P_miss 0, P_fa 2/3. TWV = 1 - (0.5 * 1/2 + 0.5 * 2/3) / 2 = 17/24
    assert maximum_term_weighted_value(TOY_SCORES, TOY_TARGETS, beta=0.5) == pytest.approx((17 / 24, 0.3))
    # NIST's beta 999.9: any false alarm costs more than every hit gains, so stop at q0's first hit
    # (theta 0.9: P_miss 1/2 and 1): TWV = 1 - (1/2 + 1) / 2 = 1/4
    assert maximum_term_weighted_value(TOY_SCORES, TOY_TARGETS) == pytest.approx((0.25, 0.9))
    # detecting nothing (TWV 0) beats a false alarm first
    assert maximum_term_weighted_value(torch.tensor([[0.9, 0.1]]), torch.tensor([[False, True]])) == (0.0, math.inf)


def test_mtwv_takes_tied_scores_together_and_matches_every_threshold():
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 6, (5, 9), generator=g).double()  # many ties
    targets = torch.rand(5, 9, generator=g) < 0.3
    targets[0, 0] = True
    mtwv, threshold = maximum_term_weighted_value(scores, targets, beta=2.0)
    by_threshold = [term_weighted_value(scores, targets, float(t), beta=2.0) for t in scores.unique()]
    assert mtwv == pytest.approx(max(0.0, *by_threshold))
    if threshold != math.inf:
        assert term_weighted_value(scores, targets, threshold, beta=2.0) == pytest.approx(mtwv)


# ---------------------------------------------------------------- QUESST 2014 and SUPERB-lite


def write_wav(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = int(8000 * seconds)  # QUESST's audio is 8 kHz
    soundfile.write(str(path), np.random.default_rng(samples).uniform(-0.1, 0.1, samples), 8000, subtype="PCM_16")


def write_quesst14(root: Path) -> Path:
    """A QUESST 2014 folder: three English documents and one Basque, two English dev queries and
    one Basque, one eval query; the lists, and an RTTM a split."""
    root = root / "quesst14Database"
    for name, seconds in [("00001", 1.0), ("00002", 0.5), ("00003", 0.75), ("00004", 0.5)]:
        write_wav(root / "Audio" / f"quesst14_{name}.wav", seconds)
    for name in ("dev_0001", "dev_0002", "dev_0003"):
        write_wav(root / "dev_queries" / f"quesst14_{name}.wav", 0.25)
    write_wav(root / "eval_queries" / "quesst14_eval_0001.wav", 0.25)
    scoring = root / "scoring"
    scoring.mkdir()
    languages = {"00004": "basque", "dev_0003": "basque"}
    def language_key(folder, names):
        return "".join(f"quesst14Database/{folder}/quesst14_{n}.wav {languages.get(n, 'nnenglish')}\n" for n in names)

    (scoring / "language_key_utterances.lst").write_text(language_key("Audio", ["00001", "00002", "00003", "00004"]))
    (scoring / "language_key_dev.lst").write_text(language_key("dev_queries", ["dev_0001", "dev_0002", "dev_0003"]))
    (scoring / "language_key_eval.lst").write_text(language_key("eval_queries", ["eval_0001"]))
    dev = scoring / "groundtruth_quesst14_dev"
    dev.mkdir()
    (dev / "quesst14_dev.rttm").write_text(
        "LEXEME quesst14_00001 1 0.250 0.300 quesst14_dev_0001 lex <NA> <NA>\n"
        "LEXEME quesst14_00003 1 0.100 0.200 quesst14_dev_0001 lex <NA> <NA>\n"
        "LEXEME quesst14_00002 1 0.000 0.400 quesst14_dev_0002 lex <NA> <NA>\n"
        "LEXEME quesst14_00004 1 0.100 0.200 quesst14_dev_0003 lex <NA> <NA>\n"
    )
    evaluation = scoring / "groundtruth_quesst14_eval"
    evaluation.mkdir()
    (evaluation / "quesst14_eval.rttm").write_text("LEXEME quesst14_00002 1 0.1 0.2 quesst14_eval_0001 lex <NA> <NA>\n")
    return root


def test_quesst14_reads_its_layout(tmp_path):
    root = write_quesst14(tmp_path)
    dev = quesst14.load(root, "dev")
    assert [r["id"] for r in dev.documents] == ["quesst14_00001", "quesst14_00002", "quesst14_00003"]
    assert [r["id"] for r in dev.queries] == ["quesst14_dev_0001", "quesst14_dev_0002"]
    assert [r["num_samples"] for r in dev.documents] == [16000, 8000, 12000]  # 8 kHz files, counted at 16 kHz
    assert all(Path(r["path"]).is_file() for r in dev.documents + dev.queries)
    assert dev.occurrences[0] == {"query": "quesst14_dev_0001", "doc": "quesst14_00001", "term": "quesst14_dev_0001",
                                  "start": 4000, "end": 8800}  # fmt: skip
    assert dev.targets().tolist() == [[True, False, True], [False, True, False]]
    test = quesst14.load(root, "test")
    assert [r["id"] for r in test.queries] == ["quesst14_eval_0001"]
    assert test.targets().tolist() == [[False, True, False]]
    everything = quesst14.load(root, "dev", language=None)
    assert len(everything.documents) == 4 and len(everything.queries) == 3 and len(everything.occurrences) == 4
    # the QbE task reads the same through the corpus registry: one split's list at a time, then the occurrences
    from speechssl.data.corpora import corpus_manifest, corpus_resource

    assert corpus_manifest("quesst14", root, "qbe", "dev_docs") == dev.documents
    assert corpus_manifest("quesst14", root, "qbe", "test_queries") == test.queries
    assert corpus_resource("quesst14", root, "qbe_occurrences") == {"dev": dev.occurrences, "test": test.occurrences}


@pytest.mark.parametrize("missing", [
    "scoring/language_key_utterances.lst",
    "scoring/language_key_dev.lst",
    "scoring/groundtruth_quesst14_dev/quesst14_dev.rttm",
    "Audio/quesst14_00002.wav",
    "dev_queries/quesst14_dev_0001.wav",
])  # fmt: skip
def test_quesst14_names_the_missing_file(tmp_path, missing):
    root = write_quesst14(tmp_path)
    (root / missing).unlink()
    with pytest.raises(ConfigError, match=Path(missing).name):
        quesst14.load(root, "dev")


def test_quesst14_rejects_an_unknown_split_and_a_bad_rttm_line(tmp_path):
    root = write_quesst14(tmp_path)
    with pytest.raises(ConfigError, match="unknown QbE split 'train'"):
        quesst14.load(root, "train")
    (root / "scoring/groundtruth_quesst14_dev/quesst14_dev.rttm").write_text("LEXEME quesst14_00001 1 zero\n")
    with pytest.raises(ConfigError, match=r"quesst14_dev.rttm:1: expected 'LEXEME"):
        quesst14.load(root, "dev")


def test_superb_lite_qbe_reads_the_synthetic_layout(tmp_path):
    qbe = tmp_path / "qbe"
    qbe.mkdir()
    (qbe / "dev_queries.tsv").write_text("id\tpath\tnum_samples\tspeaker\tterm\n"
                                         "q1\t../audio/q1.wav\t800\ts1\tapple\n")  # fmt: skip
    (qbe / "dev_docs.tsv").write_text("id\tpath\tnum_samples\tspeaker\ttext\n"
                                      "d1\t../audio/d1.wav\t9000\ts2\tan apple\n"
                                      "d2\t../audio/d2.wav\t7000\ts3\tno\n")  # fmt: skip
    (qbe / "dev_occurrences.tsv").write_text("query\tdoc\tterm\tstart\tend\nq1\td1\tapple\t1200\t5000\n")
    split = superb_lite_qbe(tmp_path, "dev")
    assert [r["id"] for r in split.documents] == ["d1", "d2"] and split.targets().tolist() == [[True, False]]
    assert split.occurrences == [{"query": "q1", "doc": "d1", "term": "apple", "start": 1200, "end": 5000}]
    (qbe / "dev_occurrences.tsv").write_text("query\tdoc\tterm\tstart\tend\nq1\td9\tapple\t1200\t5000\n")
    with pytest.raises(ConfigError, match="dev_occurrences.tsv: occurrence of query 'q1' in document 'd9'"):
        superb_lite_qbe(tmp_path, "dev")
    (qbe / "dev_occurrences.tsv").unlink()
    with pytest.raises(ConfigError, match="dev_occurrences.tsv: no such file"):
        superb_lite_qbe(tmp_path, "dev")
