"""Message passing between the host's slots (``tamiyo.learned.message_rounds``): each round reaches one slot further
each way, padding neither sends nor receives, and no slots or one slot are handled."""

from __future__ import annotations

import torch

from esper_tamiyo.learned.network import NetworkConfig, SlotMessages, build_network


def encodings(rounds: int, s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    network = build_network(NetworkConfig(message_rounds=rounds), seed=3)
    with torch.no_grad():
        for messages in network.slot_messages:
            s = messages(s, valid)
    return s


def test_each_round_carries_a_slot_one_neighbour_further_each_way() -> None:
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(1, 7, 64, generator=generator)
    valid = torch.ones(1, 7, dtype=torch.bool)
    changed = s.clone()
    changed[0, 3] += 1.0  # the middle slot
    for rounds, reached in [(1, {2, 3, 4}), (2, {1, 2, 3, 4, 5})]:
        moved = (encodings(rounds, changed, valid) - encodings(rounds, s, valid)).abs().amax(dim=-1)[0]
        assert {i for i in range(7) if moved[i] > 1e-6} == reached, rounds


def test_padding_sends_nothing_and_stays_zero() -> None:
    generator = torch.Generator().manual_seed(1)
    live = torch.randn(1, 3, 64, generator=generator)
    padded = torch.cat([live, torch.randn(1, 4, 64, generator=generator)], dim=1)  # junk where the padding is
    valid = torch.tensor([[True, True, True, False, False, False, False]])
    alone = encodings(2, live, torch.ones(1, 3, dtype=torch.bool))
    together = encodings(2, padded, valid)
    torch.testing.assert_close(together[:, :3], alone)
    assert together[:, 3:].abs().max() == 0


def test_no_slots_at_all_and_one_slot_are_handled() -> None:
    layer = SlotMessages(8)
    assert layer(torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0, 8)
    one = layer(torch.ones(1, 1, 8), torch.ones(1, 1, dtype=torch.bool))
    assert one.shape == (1, 1, 8) and torch.isfinite(one).all()


def test_rounds_are_part_of_the_architecture_and_off_by_default() -> None:
    two, none = build_network(NetworkConfig(message_rounds=2)), build_network(NetworkConfig())
    assert len(two.slot_messages) == 2 and len(none.slot_messages) == 0
    assert set(two.state_dict()) - set(none.state_dict()), "the message layers are parameters an update must carry"
