"""Caption decoding against brute force: every caption a tiny captioner can give, scored by teacher forcing.

The reference here shares no code with the searches: it enumerates all captions of up to ``max_len`` words,
scores each from ``model(images, captions)``'s logits (PAD and START ruled out, as documented) and ranks them by
``log p / length ** length_penalty`` with END counted in the length.
"""
import itertools
from typing import Optional

import pytest
import torch

from visattn import create_model
from visattn.inference.captioner import decode
from visattn.models.show_attend_tell import END_ID, PAD_ID, START_ID, ShowAttendTell

UNK_ID = 3
VOCAB = 6  # PAD, START, END, UNK and two words
TINY = dict(vocab_size=VOCAB, encoder_kwargs=dict(layers=(1, 1), widths=(8, 16), small_input=False),
            img_size=32, grid_size=2, embed_dim=8, hidden_dim=12, attn_dim=8, dropout=0.0)
EVERY_CAPTION = 128  # a beam wider than every caption of up to 4 words (121) keeps them all


def tiny_captioner(*, bias: Optional[dict[int, float]] = None) -> ShowAttendTell:
    """Random weights; ``bias`` adds to the chosen tokens' logits."""
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    with torch.no_grad():
        for token, value in (bias or {}).items():
            net.fc.bias[token] += value
    return net


def spread_out(net: ShowAttendTell) -> ShowAttendTell:
    """Adds ``2 sin(20 h W)`` to the logits of the model's own steps (decoding and teacher forcing alike): a
    random-looking function of the image and every word so far, so that captions' probabilities differ widely
    and greedy, beam and each length penalty's choices part (a fresh decoder says about the same for any image)."""
    mixing = torch.randn(TINY["hidden_dim"], VOCAB, generator=torch.Generator().manual_seed(2))
    step = net.step

    def spread_step(*args, **kwargs):
        logits, (h, c), alpha = step(*args, **kwargs)
        return logits + 2.0 * torch.sin(20.0 * h @ mixing), (h, c), alpha

    net.step = spread_step
    return net


@pytest.fixture(scope="module")
def model():
    return spread_out(tiny_captioner())


@pytest.fixture(scope="module")
def images():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(8))


def all_captions(max_len: int) -> list[list[int]]:
    """Every caption a decoder can give: ``n < max_len`` words and END, or ``max_len`` words cut off."""
    words = [w for w in range(VOCAB) if w not in (PAD_ID, START_ID, END_ID)]
    return [list(seq) + [END_ID] * (n < max_len)
            for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]


def teacher_forced(model, image: torch.Tensor, captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption's summed log-probability ``(N,)`` and its steps' attention ``(N, T, P)``."""
    longest = max(map(len, captions))
    ids = torch.tensor([[START_ID] + c + [PAD_ID] * (longest - len(c)) for c in captions])
    with torch.no_grad():
        logits, alphas = model(image[None].expand(len(captions), -1, -1, -1), ids)  # (N, T, V), (N, T, P)
    logits[..., [PAD_ID, START_ID]] = float("-inf")  # documented: neither can be generated
    picked = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)  # (N, T)
    real = torch.tensor([[t < len(c) for t in range(longest)] for c in captions])
    return picked.masked_fill(~real, 0.0).sum(1), alphas


def best_caption(model, image, max_len: int, length_penalty: float) -> tuple[list[int], float]:
    """The brute-force best caption (END kept) and its ``log p / length ** length_penalty``."""
    captions = all_captions(max_len)
    log_p, _ = teacher_forced(model, image, captions)
    scores = log_p / torch.tensor([float(len(c)) for c in captions]) ** length_penalty
    best = int(scores.argmax())
    return captions[best], scores[best].item()


def step_wise_argmax(model, image, max_len: int) -> list[int]:
    """Greedy decoding by its definition: the most likely next token after the words so far, until END."""
    caption = []
    while len(caption) < max_len and END_ID not in caption:
        with torch.no_grad():  # the PAD closing the ids is never read: step t sees the words before it
            logits, _ = model(image[None], torch.tensor([[START_ID] + caption + [PAD_ID]]))
        logits = logits[0, len(caption)]
        logits[[PAD_ID, START_ID]] = float("-inf")
        caption.append(int(logits.argmax()))
    return caption


def words_of(caption: list[int]) -> list[int]:
    return caption[:-1] if caption and caption[-1] == END_ID else caption


@pytest.mark.parametrize("max_len", [1, 2, 3])
def test_greedy_decoding_is_the_step_wise_argmax_scored_by_teacher_forcing(model, images, max_len):
    out = model.greedy_decode(images, max_len=max_len)
    for image, tokens, maps, score, finished in zip(images, out.tokens, out.attention, out.scores, out.finished):
        caption = step_wise_argmax(model, image, max_len)
        log_p, alphas = teacher_forced(model, image, [caption])
        assert tokens.tolist() == words_of(caption)
        assert bool(finished) == (caption[-1] == END_ID)
        assert score.item() == pytest.approx(log_p.item(), abs=1e-5)
        # one map per word, END's left out, each the attention of the step that chose the word
        torch.testing.assert_close(maps.flatten(1), alphas[0, :len(tokens)])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.5, 2.0, -1.0])
@pytest.mark.parametrize("max_len", [1, 2, 4])
def test_a_beam_wider_than_every_caption_finds_the_brute_force_best(model, images, max_len, length_penalty):
    """A beam wider than the vocabulary used to search only vocabulary-wide: its global best was out of reach."""
    out = model.beam_search(images, beam_size=EVERY_CAPTION, max_len=max_len, length_penalty=length_penalty)
    for image, tokens, maps, score, finished in zip(images, out.tokens, out.attention, out.scores, out.finished):
        caption, best = best_caption(model, image, max_len, length_penalty)
        _, alphas = teacher_forced(model, image, [caption])
        assert (tokens.tolist(), bool(finished)) == (words_of(caption), caption[-1] == END_ID)
        # float32 sums taken in another order (a batched beam against teacher forcing): 1.01e-5 apart on an AVX2 CPU
        assert score.item() == pytest.approx(best, abs=3e-5)
        torch.testing.assert_close(maps.flatten(1), alphas[0, :len(tokens)])
        torch.testing.assert_close(maps.sum((1, 2)), torch.ones(len(tokens)))


def test_the_brute_force_cases_tell_the_length_penalties_apart(model, images):
    """The searches above would pass with any normalisation unless the best captions differ between penalties."""
    picks = {lp: [best_caption(model, image, 3, lp)[0] for image in images] for lp in (0.0, 1.0, 2.0, -1.0)}
    assert len({str(p) for p in picks.values()}) == 4, picks
    assert any(len(c) == 3 and c[-1] != END_ID for c in picks[2.0])  # a cut caption wins somewhere
    greedy = [step_wise_argmax(model, image, 3) for image in images]
    assert greedy != picks[0.0]  # beam search finds likelier captions than greedy here


def test_a_beam_of_one_is_greedy_decoding_exactly(model, images):
    greedy = model.greedy_decode(images, max_len=3)
    beam = model.beam_search(images, beam_size=1, max_len=3, length_penalty=0.0)
    assert [t.tolist() for t in beam.tokens] == [t.tolist() for t in greedy.tokens]
    assert all(torch.equal(b, g) for b, g in zip(beam.attention, greedy.attention))
    torch.testing.assert_close(beam.scores, greedy.scores)
    assert torch.equal(beam.finished, greedy.finished)


@pytest.mark.parametrize("beam_size", [2, 4, 7])
def test_a_batch_decodes_each_image_as_it_alone_decodes(model, images, beam_size):
    batched = model.beam_search(images, beam_size=beam_size, max_len=3)
    for i, image in enumerate(images):
        alone = model.beam_search(image[None], beam_size=beam_size, max_len=3)
        assert batched.tokens[i].tolist() == alone.tokens[0].tolist()
        torch.testing.assert_close(batched.attention[i], alone.attention[0])
        torch.testing.assert_close(batched.scores[i], alone.scores[0])


def test_start_and_pad_are_never_generated_however_likely_and_unk_is_a_word(images):
    """PAD and START are ruled out of the softmax, not only skipped: scores are the brute force's without them;
    a generated <unk> stays in the caption (README: it is scored as a word no reference holds)."""
    net = spread_out(tiny_captioner(bias={PAD_ID: 40.0, START_ID: 40.0, UNK_ID: 3.0}))
    for out in (net.greedy_decode(images, max_len=3), net.beam_search(images, beam_size=EVERY_CAPTION, max_len=3)):
        assert any(UNK_ID in t.tolist() for t in out.tokens)
        for tokens in out.tokens:
            assert not set(tokens.tolist()) & {PAD_ID, START_ID, END_ID}
    beam = net.beam_search(images, beam_size=EVERY_CAPTION, max_len=3)
    for image, tokens, score in zip(images, beam.tokens, beam.scores):
        caption, best = best_caption(net, image, 3, 1.0)
        assert tokens.tolist() == words_of(caption) and score.item() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3, EVERY_CAPTION])
def test_images_whose_every_hypothesis_ends_at_the_first_step_give_empty_finished_captions(images, beam_size):
    """END so likely that nothing else has any probability: the caption is empty, finished, scored log p(END)
    (0 here), and the search takes one step: hypotheses of probability 0 are not kept searching to max_len."""
    net = tiny_captioner()
    steps = []
    step = net.step

    def counted_step(*args, **kwargs):
        steps.append(1)
        return step(*args, **kwargs)

    net.step = counted_step
    with torch.no_grad():
        net.fc.bias[:] = float("-inf")
        net.fc.bias[END_ID] = 0.0
    out = decode(net, images, beam_size=beam_size, max_len=4)
    assert [t.tolist() for t in out.tokens] == [[]] * len(images)
    assert [a.shape for a in out.attention] == [(0, 2, 2)] * len(images)
    assert out.finished.all() and out.scores.tolist() == [0.0] * len(images)
    assert len(steps) == 1


@pytest.mark.parametrize("beam_size", [1, 2, 5, EVERY_CAPTION])
def test_a_caption_cut_at_max_len_is_returned_and_scored_over_its_words(images, beam_size):
    """END never likely: every caption is cut at max_len, flagged unfinished, scored over its max_len words."""
    net = spread_out(tiny_captioner(bias={END_ID: -30.0}))
    out = decode(net, images, beam_size=beam_size, max_len=2, length_penalty=1.0)
    for image, tokens, score, finished in zip(images, out.tokens, out.scores, out.finished):
        log_p, _ = teacher_forced(net, image, [tokens.tolist()])
        assert len(tokens) == 2 and not finished
        assert score.item() == pytest.approx(log_p.item() / (2.0 if beam_size > 1 else 1.0), abs=1e-5)


def test_ties_are_broken_towards_the_lower_token_id_alike_in_every_search(images):
    """Two words equally likely at every step: greedy decoding, a beam of one and a batch of one all keep the lower
    id (topk made a beam of one take the higher, and part from greedy decoding)."""
    net = tiny_captioner()
    with torch.no_grad():
        net.fc.weight[5] = net.fc.weight[4]
        net.fc.bias[4] = net.fc.bias[5] = 20.0
    for out in (net.greedy_decode(images, max_len=3), net.beam_search(images, beam_size=1, max_len=3),
                net.beam_search(images[:1], beam_size=1, max_len=3)):
        assert all(t.tolist() == [4, 4, 4] for t in out.tokens)


def test_ties_go_to_the_lower_token_id_in_every_search(images):
    """Words 3, 4 and 5 interchangeable (same embedding, same output row): a caption ties with each one that has
    another of them in a word's place. Greedy decoding's max took the lowest id; topk in the beam any of them (a beam
    of 3 gave 4s and 5s here)."""
    net = tiny_captioner(bias={3: 2.0, 4: 2.0, 5: 2.0})
    with torch.no_grad():
        net.embed.weight[4:6] = net.embed.weight[3]
        net.fc.weight[4:6] = net.fc.weight[3]
        net.fc.bias[4:6] = net.fc.bias[3]
    greedy = net.greedy_decode(images, max_len=3)
    assert any(3 in t.tolist() for t in greedy.tokens)
    for beam_size in (1, 3, EVERY_CAPTION):
        out = net.beam_search(images, beam_size=beam_size, max_len=3)
        assert not any({4, 5} & set(t.tolist()) for t in out.tokens), beam_size
        if beam_size == 1:
            assert [t.tolist() for t in out.tokens] == [t.tolist() for t in greedy.tokens]
        if beam_size == EVERY_CAPTION:  # the brute force's argmax takes the first of equal scores: 3 before 4, 5
            best = [words_of(best_caption(net, image, 3, 1.0)[0]) for image in images]
            assert [t.tolist() for t in out.tokens] == best
