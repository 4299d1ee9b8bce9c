"""Language analysis measures on hand-made cases whose answer is known."""

import math

import pytest
import torch
import torch.nn.functional as F

from envs.data import Split, Splits
from trainers.language.analysis import (
    analyse,
    bit_entropy,
    distinct_fraction,
    intervention,
    message_entropy,
    probe_information,
    spearman,
    topographic_similarity,
)


def class_code(labels: torch.Tensor, length: int = 32) -> torch.Tensor:
    """Messages ``[N, length, 2]`` whose first 4 bits are the class in binary, the rest 0."""
    bits = torch.stack([(labels >> i) & 1 for i in range(4)], -1)
    bits = torch.cat([bits, torch.zeros(len(labels), length - 4, dtype=torch.long)], -1)
    return F.one_hot(bits, 2).float()


def labelled(n: int, seed: int) -> torch.Tensor:
    return torch.arange(n) % 10 if seed < 0 else torch.randint(10, (n,), generator=torch.Generator().manual_seed(seed))


def splits_of(make) -> Splits:
    parts = []
    for n, seed in ((2000, 0), (500, 1), (1000, -1)):  # a balanced test set: H(class) = log2(10)
        labels = labelled(n, seed)
        parts.append(Split(make(labels), labels))
    return Splits(*parts)


def test_a_message_equal_to_the_class_code_carries_log2_10_bits_and_is_read_perfectly():
    code = splits_of(lambda y: class_code(y).flatten(-2))
    accuracy, bits = probe_information([code], epochs=200, lr=0.1, seeds=[0])[0]
    assert accuracy == 100.0
    assert bits == pytest.approx(math.log2(10), abs=0.05)


def test_a_constant_message_carries_nothing():
    constant = splits_of(lambda y: class_code(torch.zeros_like(y)).flatten(-2))
    accuracy, bits = probe_information([constant], epochs=10, lr=0.05, seeds=[0])[0]
    assert bits == pytest.approx(0.0, abs=0.02) and accuracy <= 11.0
    messages = class_code(torch.zeros(100, dtype=torch.long))
    assert distinct_fraction(messages) == 0.01 and message_entropy(messages) == 0.0
    assert torch.equal(bit_entropy(messages), torch.zeros(32))


def test_entropies_and_distinct_messages_of_the_class_code():
    labels = torch.arange(1000) % 10
    messages = class_code(labels)
    assert distinct_fraction(messages) == 10 / 1000
    assert message_entropy(messages) == pytest.approx(math.log2(10))
    per_bit = bit_entropy(messages)
    assert per_bit[0] == pytest.approx(1.0)  # class parity: half of the classes
    assert per_bit[3] == pytest.approx(-(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8)))  # 8 and 9 set bit 3
    assert per_bit[4:].sum() == 0


def test_spearman_averages_ties_like_scipy():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0])
    y = torch.tensor([2.0, 1.0, 4.0, 3.0, 6.0])
    # by hand: ranks 1, 2.5, 2.5, 4, 5 and 2, 1, 4, 3, 5; Pearson of the ranks = 6.5 / sqrt(9.5 * 10)
    assert spearman(x, y) == pytest.approx(6.5 / math.sqrt(95))
    assert spearman(x, -x) == pytest.approx(-1.0) and spearman(x, torch.ones(5)) == 0.0


def test_topographic_similarity_is_1_for_a_message_that_is_the_image():
    bits = torch.randint(2, (200, 16), generator=torch.Generator().manual_seed(0))
    # Euclidean distance of binary images is sqrt(Hamming distance): a monotone map, so rho = 1
    assert topographic_similarity(F.one_hot(bits, 2).float(), bits.float()) == pytest.approx(1.0)
    shuffled = bits[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    assert abs(topographic_similarity(F.one_hot(bits, 2).float(), shuffled.float())) < 0.05


def test_intervention_drop_is_the_effect_of_the_message_on_the_decision():
    noise = splits_of(lambda y: torch.randn(len(y), 8, generator=torch.Generator().manual_seed(len(y))))
    code = splits_of(lambda y: class_code(y).flatten(-2))
    out = intervention([noise], [code], epochs=30, lr=0.05, seeds=[0])[0]
    assert out["joint_probe"] == 100.0
    assert out["joint_probe_other_message"] < 20.0  # another image's message: mostly another class
    assert out["intervention_drop"] == pytest.approx(out["joint_probe"] - out["joint_probe_other_message"])
    constant = splits_of(lambda y: class_code(torch.zeros_like(y)).flatten(-2))
    useless = intervention([code], [constant], 30, 0.05, [0])[0]
    assert useless["intervention_drop"] == 0.0  # a constant message changes nothing


class CodeSpeaker(torch.nn.Module):
    """Reads the class off the first pixel (the image is the label) and says it; features are noise-free
    copies of the view."""

    def forward(self, view):
        labels = view[:, 0].round().long()
        return class_code(labels) * 10, view


def test_analyse_reports_every_measure_for_both_speakers():
    seen = splits_of(lambda y: y.float().unsqueeze(-1).expand(-1, 3).clone())
    speakers = {"teacher": CodeSpeaker(), "student": CodeSpeaker()}
    out = analyse([(speakers, {"teacher": seen, "student": seen}, 0)], seen.test.images, (32, 2), epochs=200, lr=0.1)[0]
    assert out["teacher_message_probe"] == 100.0 and out["agreement"] == 1.0
    assert out["teacher_distinct"] == 0.01 and out["teacher_message_bits"] == pytest.approx(math.log2(10), abs=0.05)
    assert out["joint_probe"] == 100.0 and out["intervention_drop"] >= 0.0
    assert out["message_gain"] == pytest.approx(out["joint_probe"] - out["feature_probe"])
    assert {"student_topsim", "feature_probe", "teacher_bit_entropy"} <= out.keys()


def test_spearman_gives_the_same_number_on_one_thread_or_two():
    import torch

    from trainers.language.analysis import spearman

    g = torch.Generator().manual_seed(0)
    x = torch.rand(500_000, generator=g)
    y = x + torch.rand(500_000, generator=g)
    before = torch.get_num_threads()
    try:
        values = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            values.append(spearman(x, y))
    finally:
        torch.set_num_threads(before)
    assert values[0] == values[1] and 0.5 < values[0] < 0.9
