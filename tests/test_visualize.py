"""Drawn boxes and labels: every label lies inside the image and no two labels overlap."""

import itertools
import random

import numpy as np
import pytest

from simvg.visualize import PhraseBoxes, disjoint, draw_groundings, layout_labels, place_labels


def phrases(boxes, long=True):
    return [PhraseBoxes(f"{i + 1}. {'the phrase that names object number ' if long else ''}{i}", [(box, 0.9)],
                        (50 * i % 256, 120, 200), short=str(i + 1)) for i, box in enumerate(boxes)]  # fmt: skip


def assert_apart_and_inside(rects, size):
    width, height = size
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, ((x0, y0, x1, y1), size)
    for a, b in itertools.combinations(rects, 2):
        assert disjoint(a, b), (a, b)


@pytest.mark.parametrize("size", [(96, 64), (64, 96), (200, 120)])
def test_labels_of_several_phrases_on_a_small_image_are_apart_and_inside(size):
    # Five overlapping boxes near one corner, one touching the image's edges.
    width, height = size
    boxes = [(2, 2, 30, 20), (6, 4, 34, 24), (10, 8, 38, 28), (0, 0, width, height), (width - 20, height - 15, width, height)]
    layout = layout_labels(size, phrases(boxes))
    rects = [rect for *_, rect in layout]
    assert all(rect is not None for rect in rects), layout  # every phrase labelled, by its number at least
    assert_apart_and_inside(rects, size)


def test_random_layouts_keep_labels_apart_and_inside():
    rng = random.Random(0)
    for _ in range(40):
        size = (rng.randint(40, 400), rng.randint(40, 400))
        boxes = []
        for _ in range(rng.randint(1, 10)):
            x0, y0 = rng.uniform(-10, size[0]), rng.uniform(-10, size[1])
            boxes.append((x0, y0, x0 + rng.uniform(1, size[0]), y0 + rng.uniform(1, size[1])))
        layout = layout_labels(size, phrases(boxes, long=rng.random() < 0.5))
        assert_apart_and_inside([rect for *_, rect in layout if rect is not None], size)
        # A label found no room only when the image is crowded: never the first one.
        assert layout[0][3] is not None


def test_a_long_label_is_shortened_to_the_image_width_and_a_lone_one_keeps_its_words():
    (layout,) = layout_labels((120, 90), [PhraseBoxes("1. " + "very " * 30 + "long phrase", [((40, 40, 80, 80), 1.0)],
                                                      (255, 0, 0), short="1")])  # fmt: skip
    _, _, text, rect = layout
    assert text.startswith("1. very very") and text.endswith("…") and rect[2] - rect[0] <= 120
    assert rect[3] == 40  # just above its box


def test_a_phrase_may_have_no_box_or_several():
    groundings = [PhraseBoxes("1. nothing here", [], (255, 0, 0), "1"),
                  PhraseBoxes("2. both stars", [((5, 5, 25, 25), 0.9), ((60, 40, 80, 60), 0.8)], (0, 0, 255), "2")]  # fmt: skip
    layout = layout_labels((100, 80), groundings)
    assert [g.label for g, *_ in layout] == ["2. both stars", "2. both stars"]
    assert_apart_and_inside([rect for *_, rect in layout], (100, 80))
    image = draw_groundings(np.zeros((80, 100, 3), np.uint8), groundings)
    assert image.size == (100, 80)
    x0, y0, x1, y1 = layout[0][3]
    assert tuple(image.getpixel((x0, y0))) == (0, 0, 255)  # the label's background, in the phrase's colour


def test_labels_on_boxes_given_in_original_pixels_of_a_downscaled_image():
    # A 4000 x 3000 photo drawn at 400 x 300: boxes scaled by 0.1, labels inside the drawing.
    layout = layout_labels((400, 300), phrases([(3500, 2500, 4000, 3000), (0, 0, 600, 400)]), scale=0.1)
    assert [box for _, box, *_ in layout] == [(350.0, 250.0, 400.0, 300.0), (0.0, 0.0, 60.0, 40.0)]
    assert_apart_and_inside([rect for *_, rect in layout], (400, 300))


def test_place_labels_refuses_a_label_larger_than_the_image():
    assert place_labels([(0, 0, 10, 10)], [(50, 10)], (40, 40)) == [None]
