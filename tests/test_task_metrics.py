"""The ready task metrics on hand-computed cases: edit distances, CTC greedy decoding, CER against
the reference and against text labels, IoU, greedy box matching and F1."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.task_metrics import (MetricArgumentError, box_f1, box_iou, ctc_cer, ctc_greedy_decode,
                                 edit_distance)


def one_hot(indices: list[list[int]], classes: int = 5) -> np.ndarray:
    """[N, T, C] scores whose argmax is ``indices``."""
    out = np.zeros((len(indices), len(indices[0]), classes), np.float32)
    for n, row in enumerate(indices):
        out[n, np.arange(len(row)), row] = 1.0
    return out


@pytest.mark.parametrize("a, b, want", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3),
                                        ("abc", "abc", 0), ("abcd", "acbd", 2), ("ab", "ba", 2),
                                        ([1, 2, 3], [1, 3], 1)])
def test_edit_distance(a, b, want):
    assert edit_distance(a, b) == want


def test_greedy_decode_merges_repeats_and_drops_blanks():
    # 1 1 0 1 2 2 0 0 3 -> 1 1 2 3 (a blank separates the two 1s)
    assert ctc_greedy_decode(one_hot([[1, 1, 0, 1, 2, 2, 0, 0, 3]])) == [[1, 1, 2, 3]]
    assert ctc_greedy_decode(one_hot([[0, 0, 0]])) == [[]]


def test_cer_against_the_reference_sums_distances_over_lines():
    ref = [{"y": one_hot([[1, 2, 3, 0], [4, 4, 0, 0]])}]            # "123", "4"
    cand = [{"y": one_hot([[1, 2, 2, 0], [4, 0, 4, 0]])}]           # "12" (1 deletion), "44" (1 insertion)
    assert ctc_cer(ref, ref) == 0.0
    assert ctc_cer(ref, cand) == pytest.approx(2 / 4)
    # the same lines split over two feeds give the same corpus CER
    split_ref = [{"y": one_hot([[1, 2, 3, 0]])}, {"y": one_hot([[4, 4, 0, 0]])}]
    split_cand = [{"y": one_hot([[1, 2, 2, 0]])}, {"y": one_hot([[4, 0, 4, 0]])}]
    assert ctc_cer(split_ref, split_cand) == pytest.approx(2 / 4)


def test_cer_against_text_labels_with_a_charset(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("a\nb\nc\n", encoding="utf-8")               # 1:a 2:b 3:c 4:space
    cand = [{"y": one_hot([[1, 0, 2, 4, 3], [3, 3, 0, 0, 0]])}]   # "ab c", "c"
    labels = np.array(["ab c", "cab"])
    # line 1 exact, line 2 "c" vs "cab": 2 deletions; truth has 4 + 3 characters
    assert ctc_cer(cand, cand, labels, charset=str(keys)) == pytest.approx(2 / 7)
    with pytest.raises(MetricArgumentError, match="charset"):
        ctc_cer(cand, cand, labels)
    with pytest.raises(MetricArgumentError, match="2 labels for 1"):
        ctc_cer(cand, [{"y": one_hot([[1, 2, 3, 0, 0]])}], labels, charset=str(keys))
    with pytest.raises(MetricArgumentError, match="charset file"):
        ctc_cer(cand, cand, labels, charset=str(tmp_path / "missing.txt"))
    assert ctc_cer.higher_is_better is False


def test_box_iou_by_hand():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 2, 1]])
    # overlap 1 of union 7; identical; disjoint; contained half
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0, 0.0, 0.5]])


def detections(*images: list[list[float]]) -> list[dict[str, np.ndarray]]:
    width = max(len(box) for image in images for box in image)
    rows = max(len(image) for image in images)
    out = np.zeros((len(images), rows, width), np.float32)  # padding rows score 0: never counted
    for n, image in enumerate(images):
        out[n, :len(image)] = image
    return [{"boxes": out}]


def test_box_f1_by_hand():
    ref = detections([[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.8]], [[0, 0, 4, 4, 0.9]])
    # image 0: one box shifted by 1 (IoU 81/119 = 0.68 >= 0.5) and one missed; a low-score box is not
    # counted. image 1: a box of IoU 4/16 = 0.25 < 0.5 is a false positive and its truth a miss.
    cand = detections([[1, 1, 11, 11, 0.7], [50, 50, 60, 60, 0.2]], [[0, 0, 2, 2, 0.9]])
    assert box_f1(ref, ref) == 1.0
    tp, fp, fn = 1, 1, 2
    assert box_f1(ref, cand) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert box_f1(ref, cand, iou="0.7") == pytest.approx(0.0)      # 0.68 no longer matches
    assert box_f1(ref, cand, score="0.1") == pytest.approx(2 / (2 + 2 + 2))  # the 0.2 box is one more FP


def test_box_f1_matches_greedily_once_and_by_class():
    ref = detections([[0, 0, 10, 10, 0.9, 0.0]])
    # two predictions on one truth box: the best-scored one matches, the other is a false positive
    twice = detections([[0, 0, 10, 10, 0.6, 0.0], [0, 0, 10, 9, 0.95, 0.0]])
    assert box_f1(ref, twice) == pytest.approx(2 / (2 + 1))
    # the right box with the wrong class (argmax of the scores) does not match
    wrong_class = detections([[0, 0, 10, 10, 0.1, 0.9]])
    assert box_f1(ref, wrong_class) == 0.0


def test_box_f1_against_padded_labels():
    cand = detections([[0, 0, 10, 10, 0.9]], [[0, 0, 4, 4, 0.9]])
    labels = np.array([[[0, 0, 10, 10], [np.nan] * 4], [[0, 0, 4, 4], [8, 8, 9, 9]]])
    assert box_f1(cand, cand, labels) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    with pytest.raises(MetricArgumentError, match=r"\[N, boxes, 4 \+ scores\]"):
        box_f1([{"y": np.zeros((1, 3, 4))}], [{"y": np.zeros((1, 3, 4))}])


def test_charset_from_model_metadata_and_collapsed_spaces(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"character": "a\nb\nc"})
    path = tmp_path / "rec.onnx"
    onnx.save(model, path)
    cand = [{"y": one_hot([[4, 1, 0, 4, 0, 4, 2, 4]])}]           # " a  b " (indices 4 = space)
    assert ctc_cer(cand, cand, np.array(["a b"]), charset=str(path), spaces="collapse") == 0.0
    # kept: " a  b " against "a b" is 3 deletions
    assert ctc_cer(cand, cand, np.array(["a b"]), charset=str(path)) == pytest.approx(3 / 3)
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(MetricArgumentError, match="no 'character' metadata"):
        ctc_cer(cand, cand, np.array(["a b"]), charset=str(tmp_path / "plain.onnx"))


def test_cer_counts_are_per_line_distances_and_truth_lengths():
    from graphc.task_metrics import ctc_cer_counts

    ref = [{"y": one_hot([[1, 2, 3, 0], [4, 4, 0, 0]])}]            # "123", "4"
    cand = [{"y": one_hot([[1, 2, 2, 0], [4, 0, 4, 0]])}]           # "12", "44"
    errors, totals = ctc_cer_counts(ref, cand)
    assert errors.tolist() == [1, 1] and totals.tolist() == [3, 1]
    assert ctc_cer.counts is ctc_cer_counts


def two_blob_map() -> np.ndarray:
    """[1, 1, 20, 30] map: blob A rows 2-5, cols 3-9 at 0.9; blob B rows 10-14, cols 12-24 at 0.8
    plus one diagonal pixel (15, 25) at 0.7 (8-connected to B); a faint pixel (10, 25) at 0.2."""
    prob = np.zeros((20, 30), np.float32)
    prob[2:6, 3:10] = 0.9
    prob[10:15, 12:25] = 0.8
    prob[10, 25] = 0.2
    prob[15, 25] = 0.7
    return prob[None, None]


def test_probability_map_boxes_by_hand():
    from graphc.task_metrics import probability_map_boxes

    boxes, scores = probability_map_boxes(two_blob_map()[0, 0])
    # A: x 3..10, y 2..6; B: x 12..26 (the diagonal pixel joins), y 10..16; B's score is
    # (65 * 0.8 + 0.7) / 66
    assert boxes.tolist() == [[3, 2, 10, 6], [12, 10, 26, 16]]
    assert scores == pytest.approx([0.9, (65 * 0.8 + 0.7) / 66], abs=1e-6)
    # box_thresh drops B (mean 0.798), min_size drops a 2-pixel-high blob, thresh drops everything
    assert probability_map_boxes(two_blob_map()[0, 0], box_thresh=0.85)[0].tolist() == [[3, 2, 10, 6]]
    thin = np.zeros((10, 10)); thin[4:6, 1:9] = 0.9
    assert len(probability_map_boxes(thin)[0]) == 0 and len(probability_map_boxes(thin, min_size=2)[0]) == 1
    assert len(probability_map_boxes(two_blob_map()[0, 0], thresh=0.95)[0]) == 0


def test_probability_map_components_are_8_connected_not_merged_across_gaps():
    from graphc.task_metrics import probability_map_boxes

    prob = np.zeros((12, 12))
    prob[1:4, 1:4] = 0.9   # touches the next only at a corner: one component
    prob[4:7, 4:7] = 0.9
    prob[1:4, 8:11] = 0.9  # one empty column apart: its own component
    boxes, _ = probability_map_boxes(prob)
    assert sorted(boxes.tolist()) == [[1, 1, 7, 7], [8, 1, 11, 4]]


def test_det_box_f1_two_blobs_by_hand():
    from graphc.task_metrics import det_box_f1, det_box_f1_counts

    ref = [{"maps": two_blob_map()}]
    assert det_box_f1(ref, ref) == 1.0
    lost = two_blob_map()
    lost[0, 0, 10:16, 12:26] = 0.1                 # blob B gone: TP 1, FN 1 -> F1 = 2/3
    assert det_box_f1(ref, [{"maps": lost}]) == pytest.approx(2 / 3)
    errors, totals = det_box_f1_counts(ref, [{"maps": lost}])
    assert errors.tolist() == [1] and totals.tolist() == [3]
    shifted = two_blob_map()
    shifted[0, 0, 2:6, 3:10] = 0.0
    shifted[0, 0, 2:6, 6:13] = 0.9                 # A moved 3 px right: IoU 4*4 / (4*10) = 0.4
    assert det_box_f1(ref, [{"maps": shifted}], iou="0.5") == pytest.approx(2 / 4)   # TP 1, FP 1, FN 1
    assert det_box_f1(ref, [{"maps": shifted}], iou="0.35") == 1.0
    # truth boxes as labels, [N, M, 4] in map pixels, NaN rows padding
    labels = np.array([[[3, 2, 10, 6], [12, 10, 26, 16], [np.nan] * 4]])
    assert det_box_f1(ref, ref, labels) == 1.0
    assert det_box_f1(ref, [{"maps": lost}], labels) == pytest.approx(2 / 3)
    with pytest.raises(MetricArgumentError, match="probability maps"):
        det_box_f1([{"maps": np.zeros((2, 3))}], [{"maps": np.zeros((2, 3))}])
    assert det_box_f1.higher_is_better is True


def test_box_f1_counts_pool_to_the_f1():
    from graphc.task_metrics import box_f1_counts

    truth = [{"d": np.array([[[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.9]]])}]
    cand = [{"d": np.array([[[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.9]]])}]   # TP 1, FP 1, FN 1
    errors, totals = box_f1_counts(truth, cand)
    assert errors.tolist() == [2] and totals.tolist() == [4]
    assert box_f1(truth, cand) == pytest.approx(1 - 2 / 4)


def test_box_metrics_take_the_truth_from_labels_not_the_reference():
    """With labels, both box metrics count the candidate against the labels' boxes: here the labels
    hold one box the reference also finds and one it does not, so a candidate equal to the reference
    scores TP 1, FN 1 (F1 2/3), not 1.0; an empty reference changes nothing."""
    from graphc.task_metrics import box_f1_counts, det_box_f1, det_box_f1_counts

    labels = np.array([[[3, 2, 10, 6], [0, 0, 2, 2], [np.nan] * 4]])
    maps = [{"maps": two_blob_map()}]
    blank = [{"maps": np.zeros_like(two_blob_map())}]
    # the candidate's two blobs: A matches the first label, B is a false positive, the 2x2 box a miss
    assert det_box_f1(maps, maps, labels) == pytest.approx(2 / (2 + 1 + 1))
    assert det_box_f1(blank, maps, labels) == pytest.approx(2 / (2 + 1 + 1))
    errors, totals = det_box_f1_counts(blank, maps, labels)
    assert errors.tolist() == [2] and totals.tolist() == [4]
    detections = [{"d": np.array([[[3, 2, 10, 6, 0.9]]])}]
    nothing = [{"d": np.zeros((1, 1, 5))}]
    errors, totals = box_f1_counts(nothing, detections, labels)
    assert errors.tolist() == [1] and totals.tolist() == [3]            # TP 1, FN 1
    assert box_f1(detections, detections, labels) == pytest.approx(2 / 3)
