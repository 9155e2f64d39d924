"""The block picture: planted blocks come out sorted, pooled within clusters, with their boundaries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.picture import BlockPicture, block_picture


def planted(row_sizes, col_sizes, inside=1.0, outside=0.05, seed=0):
    """A shuffled block matrix with signed entries and the labels that unshuffle it."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(row_sizes)), row_sizes)
    cols = np.repeat(np.arange(len(col_sizes)), col_sizes)
    w = np.where(rows[:, None] == cols[None, :], inside, outside) * rng.choice([-1.0, 1.0], (rows.size, cols.size))
    rp, cp = rng.permutation(rows.size), rng.permutation(cols.size)
    return w[np.ix_(rp, cp)], rows[rp], cols[cp]


def test_planted_blocks_pool_to_clean_blocks_with_proportional_bounds():
    w, rows, cols = planted([40, 50, 38], [30, 60, 38])
    picture = block_picture(w, rows, cols, 3, max_rows=24, max_cols=32)

    assert picture.size == (24, 32) and picture.shape == (128, 128) and picture.k == 3
    assert picture.row_bounds == (0, 8, 17, 24)  # D'Hondt shares of 40/50/38 rows in 24 cells
    assert picture.col_bounds == (0, 8, 23, 32)
    values = np.array(picture.values)
    assert picture.scale == pytest.approx(1.0)
    for i in range(3):
        for j in range(3):
            block = values[picture.row_bounds[i]:picture.row_bounds[i + 1],
                           picture.col_bounds[j]:picture.col_bounds[j + 1]]
            np.testing.assert_allclose(block, 1.0 if i == j else 0.05)  # no cell mixes two clusters


def test_small_layer_keeps_one_cell_per_weight_sorted_by_cluster():
    w = np.array([[0.0, 2.0, 0.0], [-1.0, 0.0, 3.0]])
    picture = block_picture(w, [1, 0], [1, 0, 1], 2, max_rows=10, max_cols=10)
    assert picture.size == (2, 3) and picture.row_bounds == (0, 1, 2) and picture.col_bounds == (0, 1, 3)
    scale = np.percentile([3, 0, 1, 2, 0, 0], 99)
    # rows: unit 1 (cluster 0) then unit 0; columns: unit 1 (cluster 0), then units 0 and 2
    np.testing.assert_allclose(picture.values, np.clip(np.array([[0, 1, 3], [2, 0, 0]]) / scale, 0, 1))


def test_empty_clusters_and_tiny_pictures():
    w, rows, cols = planted([10, 0, 6], [8, 0, 8])
    picture = block_picture(w, rows, cols, 3, max_rows=4, max_cols=1)
    assert picture.row_bounds == (0, 2, 2, 4)  # the empty cluster gets no row
    assert picture.col_bounds == (0, 1, 1, 2)  # more non-empty clusters than columns: one each
    dead = block_picture(np.zeros((4, 4)), [0, 0, 1, 1], [0, 1, 0, 1], 2, 2, 2)
    assert dead.values == ((0.0, 0.0), (0.0, 0.0)) and dead.scale == 0.0


def test_picture_is_immutable_plain_data():
    w, rows, cols = planted([5, 5], [5, 5])
    picture = block_picture(w, rows, cols, 2, 4, 4)
    assert isinstance(picture, BlockPicture) and isinstance(picture.values[0][0], float)
    assert picture == block_picture(w, rows, cols, 2, 4, 4) and hash(picture) == hash(block_picture(w, rows, cols,
                                                                                                  2, 4, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        picture.scale = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        block_picture(w, rows[:-1], cols, 2, 4, 4)
