"""The paged cache's allocator on its own (kvbench/core/block_table.py): blocks taken from the free list only
as sequences grow, a shared prefix's blocks held by every sequence, and a damaged table an error."""

import pytest

from kvbench.core.block_table import BlockTable, BlockTableError, blocks_needed


def test_blocks_come_from_the_free_list_as_sequences_grow():
    table = BlockTable(6, 4, 2)
    assert table.free == [5, 4, 3, 2, 1, 0]
    table.allocate(0, 6)  # two blocks
    table.allocate(1, 4)  # one block, full
    assert table.blocks == [[0, 1], [2]] and table.refs == [1, 1, 1, 0, 0, 0] and table.free == [5, 4, 3]
    table.append(0, 2)  # 8 tokens still fit in two blocks
    assert table.blocks[0] == [0, 1]
    table.append(1)  # the 5th token takes a block
    assert table.blocks[1] == [2, 3] and table.tokens == [8, 5]
    assert table.blocks_taken() == 4 and table.tokens_stored() == 13
    table.check()


def test_an_exhausted_pool_is_an_error():
    table = BlockTable(2, 4, 1)
    table.allocate(0, 8)
    with pytest.raises(BlockTableError, match="block pool exhausted: sequence 0 needs a block for 9 tokens"):
        table.append(0)


def test_a_shared_prefix_is_held_by_every_sequence_and_counted_once():
    # 9 shared tokens, blocks of 4: two full shared blocks, the ninth token in each sequence's own block
    table = BlockTable.for_lengths([12, 9, 17], 4, shared_prefix=9)
    assert table.n_blocks == blocks_needed([12, 9, 17], 4, 9) == 2 + 1 + 1 + 3
    assert all(blocks == [0, 1] for blocks in table.blocks) and table.refs[:2] == [3, 3]
    for seq, tokens in enumerate([12, 9, 17]):
        table.allocate(seq, tokens)
    table.check()
    assert table.free == [] and table.blocks_taken() == 7
    assert table.tokens_stored() == 8 + (12 - 8) + (9 - 8) + (17 - 8)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t.blocks[1].__setitem__(0, 99), "block table of sequence 1: block 99 is outside the pool of 4"),
        (lambda t: t.blocks[1].__setitem__(0, t.blocks[0][0]), "block 0 is held 2 times, its reference count is 1"),
        (lambda t: t.refs.__setitem__(3, 1), "block 3 is held 0 times, its reference count is 1"),
    ],
)
def test_the_check_rejects_a_damaged_table_in_one_line(damage, message):
    table = BlockTable(4, 4, 2)
    table.allocate(0, 4)
    table.allocate(1, 8)
    table.check()
    damage(table)
    with pytest.raises(BlockTableError, match=message) as caught:
        table.check()
    assert "\n" not in str(caught.value)


def test_a_block_size_below_one_is_refused():
    with pytest.raises(ValueError, match="block_tokens"):
        BlockTable(1, 0, 1)


def test_runs_merge_consecutive_blocks_and_stop_at_the_tokens_held():
    from kvbench.core.block_table import BlockTable

    t = BlockTable(8, 4, 2)
    t.allocate(0, 8)  # blocks 0, 1
    t.allocate(1, 4)  # block 2
    t.allocate(0, 10)  # block 3: right after sequence 1's
    assert t.runs(0, 10) == [(0, 8), (12, 2)]
    assert t.runs(0, 5) == [(0, 5)] and t.runs(1, 3) == [(8, 3)]
    t.allocate(1, 5)  # block 4, after 3: apart from block 2
    assert t.runs(1, 5) == [(8, 4), (16, 1)]
