import math

import numpy as np
import pytest

from personalens.evaluation.metrics import (
    accuracy,
    macro_f1,
    mae,
    mean_metrics,
    metric_summary,
    paired_bootstrap,
    parse_metric_names,
    rank_of,
    ranking_metrics,
    ranking_metrics_by_name,
    ranking_order,
    ranks,
    rmse,
    roc_auc,
    standard_error,
)


def test_auc_by_hand():
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    # pairs: (0.9>0.5) (0.9>0.2) (0.5=0.5 -> half) (0.5>0.2) = 3.5 of 4
    assert roc_auc([True, True, False, False], [0.9, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        roc_auc([True, True], [0.1, 0.2])


# ----------------------------------------------------------------------------------------------------------------------
# Ranking metrics
# ----------------------------------------------------------------------------------------------------------------------

ALL_RANKING = ("hit", "ndcg", "mrr", "precision", "recall", "map")


def test_ranking_order_is_stable_on_ties():
    # 0.9 first, then the three 0.5s in list order, then 0.1
    assert ranking_order([0.5, 0.9, 0.5, 0.1, 0.5]) == [1, 0, 2, 4, 3]
    assert ranks([0.5, 0.9, 0.5, 0.1, 0.5]) == [2, 1, 3, 5, 4]
    # all tied: list order is the ranking
    assert ranks([0.0, 0.0, 0.0]) == [1, 2, 3]
    # infinities rank like any other value
    assert ranking_order([-math.inf, 0.0, math.inf]) == [2, 1, 0]


def test_rank_of_single_and_several():
    scores = [0.2, 0.9, 0.4, 0.4, 0.1]
    assert rank_of(scores, 1) == 1
    assert rank_of(scores, 2) == 2  # tied with position 3, but earlier in the list
    assert rank_of(scores, 3) == 3
    assert rank_of(scores, [4, 2]) == [2, 5]
    assert rank_of(scores, {0, 3}) == [3, 4]
    assert rank_of(np.array(scores), np.int64(4)) == 5


def test_rank_of_rejects_nan_and_bad_positions():
    with pytest.raises(ValueError, match="NaN"):
        rank_of([0.1, float("nan"), 0.3], 0)
    with pytest.raises(ValueError, match="outside"):
        rank_of([0.1, 0.2], 2)
    with pytest.raises(ValueError, match="outside"):
        rank_of([0.1, 0.2], -1)
    with pytest.raises(ValueError, match="booleans"):
        rank_of([0.1, 0.2], True)
    with pytest.raises(ValueError, match="integers"):
        rank_of([0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="at least one"):
        rank_of([0.1, 0.2], [])


def test_single_relevant_by_hand():
    # ranking: pos1 (0.9), pos2 (0.4), pos3 (0.4, tie broken by list order), pos0, pos4 -> the positive is 3rd
    scores = [0.2, 0.9, 0.4, 0.4, 0.1]
    got = ranking_metrics(scores, 3, ks=(1, 3, 5), metrics=ALL_RANKING)
    assert got["hit@1"] == 0.0 and got["hit@3"] == 1.0 and got["hit@5"] == 1.0
    assert got["ndcg@1"] == 0.0
    assert got["ndcg@3"] == pytest.approx(1 / math.log2(4))  # = 0.5
    assert got["ndcg@5"] == pytest.approx(0.5)
    assert got["mrr@1"] == 0.0 and got["mrr@3"] == pytest.approx(1 / 3) and got["mrr@5"] == pytest.approx(1 / 3)
    assert got["precision@1"] == 0.0 and got["precision@3"] == pytest.approx(1 / 3) and got["precision@5"] == 0.2
    assert got["recall@1"] == 0.0 and got["recall@3"] == 1.0
    assert got["map@1"] == 0.0 and got["map@3"] == pytest.approx(1 / 3)
    assert list(got) == [f"{m}@{k}" for m in ALL_RANKING for k in (1, 3, 5)]


def test_tie_with_the_positive_depends_on_list_order():
    assert ranking_metrics([0.5, 0.5], 0, ks=(1,), metrics=("hit",)) == {"hit@1": 1.0}
    assert ranking_metrics([0.5, 0.5], 1, ks=(1,), metrics=("hit",)) == {"hit@1": 0.0}
    got = ranking_metrics([0.7, 0.7, 0.7, 0.7], 2, ks=(4,), metrics=("mrr", "ndcg"))
    assert got == pytest.approx({"mrr@4": 1 / 3, "ndcg@4": 1 / math.log2(4)})


def test_k_larger_than_the_list():
    got = ranking_metrics([0.1, 0.3, 0.2], 2, ks=(10,), metrics=ALL_RANKING)
    # positive ranked 2nd of 3
    assert got["hit@10"] == 1.0
    assert got["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["precision@10"] == pytest.approx(0.1)  # always divided by k
    assert got["recall@10"] == 1.0
    assert got["map@10"] == pytest.approx(0.5)


def test_no_relevant_item_in_top_k():
    got = ranking_metrics([0.9, 0.8, 0.7, 0.1], [3], ks=(3,), metrics=ALL_RANKING)
    assert got == {f"{m}@3": 0.0 for m in ALL_RANKING}


def test_multiple_relevant_by_hand():
    # ranking: pos1 (0.9), pos2 (0.5), pos3 (0.5), pos0 (0.1); relevant {2, 3} sit at ranks 2 and 3
    got = ranking_metrics([0.1, 0.9, 0.5, 0.5], [2, 3], ks=(1, 2, 3, 10), metrics=ALL_RANKING)
    g = 1 / math.log2(3)  # discount at rank 2
    h = 1 / math.log2(4)  # discount at rank 3
    assert got["hit@1"] == 0.0 and got["hit@2"] == 1.0
    assert got["mrr@2"] == 0.5 and got["mrr@10"] == 0.5
    assert got["ndcg@2"] == pytest.approx(g / (1 + g))
    assert got["ndcg@3"] == pytest.approx((g + h) / (1 + g))
    assert got["ndcg@10"] == pytest.approx((g + h) / (1 + g))
    assert got["precision@2"] == 0.5 and got["precision@3"] == pytest.approx(2 / 3)
    assert got["recall@2"] == 0.5 and got["recall@3"] == 1.0
    assert got["map@2"] == pytest.approx((1 / 2) / 2)
    assert got["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_map_denominator_is_min_k_and_relevant_count():
    # two relevant, the first ranked 1st: map@1 = precision@1 / min(1, 2) = 1 (trec_eval's map_cut_1 would say 0.5)
    got = ranking_metrics([0.9, 0.5, 0.1], [0, 2], ks=(1, 3), metrics=("map", "ndcg"))
    assert got["map@1"] == 1.0
    assert got["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert got["ndcg@1"] == 1.0


def test_perfect_ranking_scores_one():
    got = ranking_metrics([0.9, 0.8, 0.7, 0.1], [0, 1, 2], ks=(1, 3, 5), metrics=ALL_RANKING)
    for k in (1, 3, 5):
        assert got[f"ndcg@{k}"] == pytest.approx(1.0)
        assert got[f"map@{k}"] == pytest.approx(1.0)
        assert got[f"hit@{k}"] == 1.0
        assert got[f"mrr@{k}"] == 1.0
    assert got["precision@5"] == pytest.approx(3 / 5)
    assert got["recall@1"] == pytest.approx(1 / 3)


def test_ranking_metrics_defaults_and_duplicate_relevant():
    got = ranking_metrics([0.3, 0.2, 0.1], [0, 0])
    assert list(got) == ["hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10", "mrr@1", "mrr@5", "mrr@10"]
    assert all(v == 1.0 for v in got.values())


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics([0.1, float("nan")], 0)
    with pytest.raises(ValueError, match="at least one"):
        ranking_metrics([0.1, 0.2], [])
    with pytest.raises(ValueError, match="outside"):
        ranking_metrics([0.1, 0.2], [5])
    with pytest.raises(ValueError, match="positive integer"):
        ranking_metrics([0.1, 0.2], 0, ks=(0,))
    with pytest.raises(ValueError, match="positive integer"):
        ranking_metrics([0.1, 0.2], 0, ks=(2.5,))
    with pytest.raises(ValueError, match="unknown ranking metric"):
        ranking_metrics([0.1, 0.2], 0, metrics=("auc",))
    with pytest.raises(ValueError, match="single string"):
        ranking_metrics([0.1, 0.2], 0, metrics="hit")
    with pytest.raises(ValueError, match="non-empty"):
        ranking_metrics([0.1, 0.2], 0, ks=())
    with pytest.raises(ValueError, match="one-dimensional"):
        ranking_metrics([[0.1, 0.2]], 0)


def test_parse_metric_names():
    assert parse_metric_names(["hit@1", "HR@5", "NDCG@5", "mrr@10", " Recall@20 ", "P@3", "MAP@10", "precision@1"]) == [
        ("hit", 1),
        ("hit", 5),
        ("ndcg", 5),
        ("mrr", 10),
        ("recall", 20),
        ("precision", 3),
        ("map", 10),
        ("precision", 1),
    ]
    assert parse_metric_names(["hr@5", "hit@5", "HIT@5"]) == [("hit", 5)]
    assert parse_metric_names([]) == []


@pytest.mark.parametrize("bad", ["auc@5", "hit@0", "hit@", "hit", "hit@x", "hit@-1", "hit@1.5", "@5", "ndcg@5@6", ""])
def test_parse_metric_names_rejects(bad):
    with pytest.raises(ValueError):
        parse_metric_names([bad])


def test_parse_metric_names_rejects_single_string():
    with pytest.raises(ValueError, match="single string"):
        parse_metric_names("hit@1")


def test_ranking_metrics_by_name():
    got = ranking_metrics_by_name([0.2, 0.9, 0.4], 2, ["HR@1", "NDCG@2", "mrr@10"])
    assert got == pytest.approx({"hit@1": 0.0, "ndcg@2": 1 / math.log2(3), "mrr@10": 0.5})


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation and comparison
# ----------------------------------------------------------------------------------------------------------------------


def test_mean_metrics():
    rows = [{"hit@1": 1.0, "ndcg@5": 0.5}, {"hit@1": 0.0, "ndcg@5": 0.25}, {"ndcg@5": 0.0, "hit@1": 1.0}]
    got = mean_metrics(rows)
    assert list(got) == ["hit@1", "ndcg@5"]
    assert got == pytest.approx({"hit@1": 2 / 3, "ndcg@5": 0.25})


def test_mean_metrics_errors():
    with pytest.raises(ValueError, match="no rows"):
        mean_metrics([])
    with pytest.raises(ValueError, match="keys"):
        mean_metrics([{"hit@1": 1.0}, {"hit@5": 1.0}])
    with pytest.raises(ValueError, match="NaN"):
        mean_metrics([{"hit@1": 1.0}, {"hit@1": float("nan")}])


def test_metric_summary():
    got = metric_summary([1.0, 2.0, 3.0, 4.0])
    # sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert got == pytest.approx({"mean": 2.5, "stderr": math.sqrt(5 / 3) / 2, "n": 4})
    one = metric_summary([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and math.isnan(one["stderr"])
    assert metric_summary([0.5, 0.5, 0.5])["stderr"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        metric_summary([])
    with pytest.raises(ValueError, match="NaN"):
        metric_summary([1.0, float("nan")])


def test_paired_bootstrap_is_seeded_and_symmetric():
    rng = np.random.default_rng(7)
    a = rng.random(60)
    b = a - 0.05 + 0.2 * rng.standard_normal(60)
    first = paired_bootstrap(a, b, n_resamples=500, seed=3)
    assert paired_bootstrap(a, b, n_resamples=500, seed=3) == first
    assert first["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert first["ci_low"] <= first["mean_diff"] <= first["ci_high"]
    assert 0.0 < first["p_value"] <= 1.0
    # swapping the methods mirrors the bootstrap distribution exactly (same seed, same resamples)
    swapped = paired_bootstrap(b, a, n_resamples=500, seed=3)
    assert swapped["mean_diff"] == pytest.approx(-first["mean_diff"])
    assert swapped["ci_low"] == pytest.approx(-first["ci_high"])
    assert swapped["ci_high"] == pytest.approx(-first["ci_low"])
    assert swapped["p_value"] == pytest.approx(first["p_value"])


def test_paired_bootstrap_no_difference_and_clear_difference():
    same = paired_bootstrap([0.1, 0.5, 0.9], [0.1, 0.5, 0.9], n_resamples=200)
    assert same == {"mean_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    # every user improves: no resample has a mean difference <= 0, so p = 2 / (B + 1)
    better = paired_bootstrap([1.0, 1.0, 0.8, 0.9], [0.0, 0.5, 0.3, 0.2], n_resamples=999, seed=1)
    assert better["p_value"] == pytest.approx(2 / 1000)
    assert better["ci_low"] > 0.0


def test_paired_bootstrap_matches_normal_theory_for_large_n():
    # many users (several resample chunks): the percentile CI is close to mean +/- 1.96 standard errors
    rng = np.random.default_rng(11)
    d = rng.standard_normal(3000) + 0.1
    got = paired_bootstrap(d, np.zeros_like(d), n_resamples=1000, seed=0)
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    assert got["ci_low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert got["ci_high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)


def test_paired_bootstrap_errors():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1.0], [2.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [2.0], confidence=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Rating and classification
# ----------------------------------------------------------------------------------------------------------------------


def test_mae_rmse_by_hand():
    assert mae([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(1.0)
    assert rmse([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(math.sqrt(5 / 3))
    assert mae([4], [4]) == 0.0 and rmse([4], [4]) == 0.0


@pytest.mark.parametrize("fn", [mae, rmse])
def test_mae_rmse_errors(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="differ in length"):
        fn([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, 2.0], [float("nan"), 2.0])


def test_accuracy_by_hand():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(["a", "b"], ["b", "a"]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1, 2], [1])


def test_macro_f1_by_hand():
    y_true, y_pred = [0, 1, 2], [0, 1, 1]
    # F1: label 0 = 1, label 1 = 2*1/(2*1+1+0) = 2/3, label 2 = 0
    assert macro_f1(y_true, y_pred) == pytest.approx((1 + 2 / 3 + 0) / 3)
    # an explicit label seen nowhere counts with F1 = 0
    assert macro_f1(y_true, y_pred, labels=[0, 1, 2, 3]) == pytest.approx((1 + 2 / 3) / 4)
    # an explicit subset averages over just those labels
    assert macro_f1(y_true, y_pred, labels=[0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    # a label only ever predicted still counts (F1 = 0) when labels is None
    assert macro_f1(["x", "x"], ["x", "y"]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0


def test_macro_f1_errors():
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="differ in length"):
        macro_f1([1], [1, 2])
    with pytest.raises(ValueError, match="labels is empty"):
        macro_f1([1], [1], labels=[])
    with pytest.raises(ValueError, match="duplicates"):
        macro_f1([1], [1], labels=[1, 1])


def test_classification_and_rating_match_scikit_learn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2024)
    for _ in range(100):
        n = int(rng.integers(1, 40))
        n_classes = int(rng.integers(2, 6))
        y_true = rng.integers(0, n_classes, n).tolist()
        y_pred = rng.integers(0, n_classes, n).tolist()
        assert accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
        assert macro_f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
        labels = sorted(rng.choice(n_classes + 2, size=int(rng.integers(1, n_classes + 3)), replace=False).tolist())
        ref = skm.f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        assert macro_f1(y_true, y_pred, labels=labels) == pytest.approx(ref)
        r_true = rng.integers(1, 6, n).astype(float)
        r_pred = r_true + rng.normal(0, 1, n)
        assert mae(r_true, r_pred) == pytest.approx(skm.mean_absolute_error(r_true, r_pred))
        assert rmse(r_true, r_pred) == pytest.approx(math.sqrt(skm.mean_squared_error(r_true, r_pred)))


# ----------------------------------------------------------------------------------------------------------------------
# Cross-check against trec_eval (ir-measures with its pytrec_eval backend)
# ----------------------------------------------------------------------------------------------------------------------


def test_ranking_metrics_match_trec_eval():
    ir_measures = pytest.importorskip("ir_measures")
    pytest.importorskip("pytrec_eval")
    from ir_measures import AP, RR, P, R, Success, nDCG

    ks = (1, 3, 5, 10, 20, 60)  # 60 exceeds every list (10-50 candidates)
    rng = np.random.default_rng(20240601)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    ours: dict[str, dict[str, float]] = {}
    n_rel_of: dict[str, int] = {}
    tied_positives = 0
    for q in range(300):
        qid = f"q{q:03d}"
        n = int(rng.integers(10, 51))
        # scores on a coarse grid of exactly representable values, so ties are frequent
        scores = (rng.integers(0, 12, n) / 8.0).tolist()
        relevant = sorted(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
        # trec_eval breaks score ties by document id, DEScending: give earlier candidates larger ids so that it sees
        # the same order as our stable sort
        doc = [f"d{n - 1 - i:03d}" for i in range(n)]
        run[qid] = {doc[i]: scores[i] for i in range(n)}
        qrels[qid] = {doc[i]: 1 for i in relevant}
        ours[qid] = ranking_metrics(scores, relevant, ks=ks, metrics=ALL_RANKING)
        n_rel_of[qid] = len(relevant)
        tied_positives += any(scores.count(scores[i]) > 1 for i in relevant)
        assert rank_of(scores, relevant)[0] == min(ranks(scores)[i] for i in relevant)
    assert tied_positives > 200  # the check really exercises tie-breaking

    measures = [RR] + [m @ k for k in ks for m in (P, R, nDCG, AP, Success)]
    ref: dict[str, dict[str, float]] = {qid: {} for qid in run}
    for row in ir_measures.pytrec_eval.iter_calc(measures, qrels, run):
        ref[row.query_id][str(row.measure)] = float(row.value)

    assert len(ref) == 300
    for qid, got in ours.items():
        r = ref[qid]
        first_rank = round(1 / r["RR"])
        for k in ks:
            assert got[f"hit@{k}"] == pytest.approx(r[f"Success@{k}"], abs=1e-12), (qid, k)
            assert got[f"precision@{k}"] == pytest.approx(r[f"P@{k}"], abs=1e-12), (qid, k)
            assert got[f"recall@{k}"] == pytest.approx(r[f"R@{k}"], abs=1e-12), (qid, k)
            assert got[f"ndcg@{k}"] == pytest.approx(r[f"nDCG@{k}"], abs=1e-9), (qid, k)
            assert got[f"mrr@{k}"] == pytest.approx(r["RR"] if first_rank <= k else 0.0, abs=1e-12), (qid, k)
            # trec_eval's map_cut_k divides by |rel|, ours (RecBole) by min(k, |rel|): compare the sums
            n_rel = n_rel_of[qid]
            assert got[f"map@{k}"] * min(k, n_rel) == pytest.approx(r[f"AP@{k}"] * n_rel, abs=1e-9), (qid, k)


def test_standard_error_is_none_rather_than_nan_below_two_values():
    assert standard_error([]) is None and standard_error([0.5]) is None
    assert standard_error([1.0, 0.0, 1.0]) == pytest.approx(metric_summary([1.0, 0.0, 1.0])["stderr"])
    assert standard_error([2.0, 4.0]) == pytest.approx(1.0)  # sd √2 over √2
