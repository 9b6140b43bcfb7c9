"""Show, Attend and Tell: attention layer, decoder shapes, regulariser, greedy and batched beam search."""
import copy

import pytest
import torch
from torch.nn import functional as F

from test_data import needs_fashion_mnist
from visattn import create_model, list_models
from visattn.errors import ConfigError
from visattn.layers.additive_attention import AdditiveAttention
from visattn.layers.lstm_cell import SigmoidLSTMCell
from visattn.layers.onednn_linear import _onednn_computes, linear as onednn_linear
from visattn.models.show_attend_tell import (END_ID, PAD_ID, START_ID, ShowAttendTell,
                                            doubly_stochastic_penalty)

VOCAB = 12
TINY = dict(vocab_size=VOCAB, encoder_kwargs=dict(layers=(1, 1), widths=(8, 16), small_input=False),
            img_size=32, grid_size=4, embed_dim=16, hidden_dim=24, attn_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("sat_cbam_resnet_scenes", **TINY).eval()


@pytest.fixture(scope="module")
def scripted():
    """The tiny model with its decoder step replaced by a fixed word-to-word table plus an
    image-dependent bias (carried in h), so searches make real, image-specific choices of
    different lengths; a freshly initialised decoder says the same thing for every image."""
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(VOCAB, VOCAB, generator=gen)  # (previous word, next word)
    mixing = torch.randn(24, VOCAB, generator=gen)

    def step(features, projected, words, state, *_):  # ignores the word table and rows: it steps every row
        h, c = state
        regions = projected.sum(-1).repeat_interleave(len(words) // len(projected), dim=0)  # (R, P), R = B * M
        alpha = (regions * (1 + words[:, None] % 3)).softmax(-1)  # word-dependent
        bias = 2.0 * F.normalize(h, dim=-1) @ mixing  # (R, V), differs per image
        return table[words] + bias, (h, c), alpha

    net.step = step
    return net


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_additive_attention_weights_sum_to_one_and_respect_mask():
    attn = AdditiveAttention(6, 5, attn_dim=4)
    features, query = torch.randn(2, 7, 6), torch.randn(2, 5)
    context, alpha = attn(features, query)
    assert context.shape == (2, 6) and alpha.shape == (2, 7)
    assert torch.allclose(alpha.sum(-1), torch.ones(2))
    assert torch.allclose(context, torch.einsum("bp,bpc->bc", alpha, features), atol=1e-6)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 3:] = False
    _, masked = attn(features, query, mask=mask)
    assert torch.all(masked[:, 3:] == 0) and torch.allclose(masked.sum(-1), torch.ones(2))


def test_additive_attention_equals_the_tanh_formula():
    attn = AdditiveAttention(6, 5, attn_dim=4)
    features, query = torch.randn(2, 7, 6) * 3, torch.randn(2, 5) * 3  # tanh saturated and linear
    hidden = torch.tanh(attn.feature_proj(features) + attn.query_proj(query)[:, None, :])
    expected = attn.score(hidden).squeeze(-1).softmax(-1)
    _, alpha = attn(features, query)
    assert torch.allclose(alpha, expected, atol=1e-6)


@pytest.mark.parametrize("sizes", [(6, 5, 4, 7), (64, 256, 128, 64)])  # the second: decoding's, through oneDNN
def test_additive_attention_over_some_queries_equals_theirs_among_all_and_zero_elsewhere(sizes):
    torch.manual_seed(0)
    feature_dim, query_dim, attn_dim, regions = sizes
    attn = AdditiveAttention(feature_dim, query_dim, attn_dim=attn_dim)
    features, queries = torch.randn(4, regions, feature_dim), torch.randn(4, 5, query_dim)
    mask = torch.rand(4, regions) > 0.3
    rows = torch.tensor([0, 3, 4, 7, 12, 19])  # (image, query) (0, 0), (0, 3), (0, 4), (1, 2), (2, 2), (3, 4)
    with torch.no_grad():
        full_context, full_alpha = attn(features, queries, mask=mask)
        context, alpha = attn(features, queries, mask=mask, rows=rows)
    kept = torch.zeros(20, dtype=torch.bool)
    kept[rows] = True
    for actual, expected in ((context, full_context), (alpha, full_alpha)):
        actual, expected = actual.flatten(0, 1), expected.flatten(0, 1)
        torch.testing.assert_close(actual[kept], expected[kept], rtol=1e-5, atol=1e-5)
        assert not actual[~kept].any()


def test_additive_attention_with_several_queries_per_image_equals_one_at_a_time():
    attn = AdditiveAttention(6, 5, attn_dim=4)
    features, queries = torch.randn(2, 7, 6), torch.randn(2, 3, 5)  # 3 queries (beams) per image
    mask = torch.rand(2, 7) > 0.3
    context, alpha = attn(features, queries, mask=mask)
    assert context.shape == (2, 3, 6) and alpha.shape == (2, 3, 7)
    for m in range(3):
        one_context, one_alpha = attn(features, queries[:, m], mask=mask)
        assert torch.allclose(context[:, m], one_context, atol=1e-6)
        assert torch.allclose(alpha[:, m], one_alpha, atol=1e-6)


def test_step_runs_several_hypotheses_per_image_against_shared_features(model, images):
    features = model.encode(images)
    projected = model.attention.project_features(features)
    state = model.init_state(features)
    words = torch.tensor([4, 5, 6])
    logits, (h, c), alpha = model.step(features, projected, words, state)
    beams = 2  # each image twice, as beam search lays out its hypotheses
    repeated_state = tuple(s.repeat_interleave(beams, dim=0) for s in state)
    beam_logits, (beam_h, _), beam_alpha = model.step(
        features, projected, words.repeat_interleave(beams), repeated_state)
    assert beam_logits.shape == (6, VOCAB) and beam_alpha.shape == (6, 16)
    assert torch.allclose(beam_logits, logits.repeat_interleave(beams, dim=0), atol=1e-5)
    assert torch.allclose(beam_alpha, alpha.repeat_interleave(beams, dim=0), atol=1e-6)


@pytest.mark.parametrize("word_table", [False, True])
def test_step_attends_and_advances_only_the_given_rows_and_looks_words_up_in_the_table_as_it_multiplies(model, images, word_table):
    features = model.encode(images)
    projected = model.attention.project_features(features)
    state = model.init_state(features)
    words = torch.tensor([4, 5, 6])
    full_logits, (full_h, full_c), full_alpha = model.step(features, projected, words, state)
    table = model.word_products() if word_table else None
    rows = torch.tensor([0, 2])
    logits, (h, c), alpha = model.step(features, projected, words, state, table, rows)
    for actual, expected in ((logits, full_logits), (h, full_h), (c, full_c), (alpha, full_alpha)):
        torch.testing.assert_close(actual[rows], expected[rows], rtol=1e-5, atol=1e-6)
    assert torch.equal(h[1], state[0][1]) and torch.equal(c[1], state[1][1])
    assert not logits[1].any() and not alpha[1].any()


@needs_fashion_mnist
def test_decoding_with_the_word_table_and_unended_rows_only_equals_stepping_every_row_in_full():
    """Greedy and beam decoding look each word's LSTM products up, advance only hypotheses that have
    not ended and reuse one buffer for the attention's activation; the shipped captioner's words, maps and scores on test scenes are those of full plain steps."""
    from visattn.data.scenes import FashionScenes
    from visattn.inference.captioner import load_captioner

    captioner = load_captioner("sat_cbam_resnet_scenes.scenes")
    net, transform = captioner.model, captioner.transform()
    scenes = FashionScenes("test", num_scenes=64, canvas_size=64)  # 64 rows: the 64-word table pays off
    images = torch.stack([transform(scenes[i].image) for i in range(len(scenes))])
    plain, used = copy.deepcopy(net), []

    def full_step(features, projected, words, state, word_products=None, rows=None, gates_buffer=None):
        used.append((word_products is not None, rows is not None, gates_buffer is not None))
        return ShowAttendTell.step(plain, features, projected, words, state)

    plain.step = full_step
    for search in ("greedy_decode", "beam_search"):
        actual, expected = getattr(net, search)(images), getattr(plain, search)(images)
        assert [t.tolist() for t in actual.tokens] == [t.tolist() for t in expected.tokens]
        torch.testing.assert_close(actual.scores, expected.scores, rtol=1e-5, atol=1e-5)
        for a, e in zip(actual.attention, expected.attention):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert {(True, False, True), (True, True, True)} <= set(used)


def test_teacher_forcing_shapes_and_attention_rows(model, images):
    captions = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 4, END_ID, PAD_ID, PAD_ID],
                             [START_ID, 8, 9, END_ID, PAD_ID]])
    logits, alphas = model(images, captions)
    assert logits.shape == (3, 4, VOCAB)
    assert alphas.shape == (3, 4, 16)  # P = 4 x 4 grid
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 4), atol=1e-5)
    assert model.input_size == (3, 32, 32) and model.vocab_size == VOCAB


def test_step_shapes(model, images):
    features = model.encode(images)
    assert features.shape == (3, 16, model.feature_dim)
    state = model.init_state(features)
    words = torch.full((3,), START_ID)
    logits, (h, c), alpha = model.step(features, model.attention.project_features(features), words, state)
    assert logits.shape == (3, VOCAB) and h.shape == c.shape == (3, 24) and alpha.shape == (3, 16)


@pytest.mark.parametrize("encoder", [{}, {"encoder_name": "vit_tiny_patch4_28", "img_size": 28, "grid_size": 7,
                                          "encoder_kwargs": {"depth": 1, "global_pool": "avg", "class_token": False}}])
def test_every_parameter_gets_a_gradient(encoder):
    """An average-pooled ViT encoder (the shipped vit_tiny_patch4_28.fmnist's layout) kept the norm only its
    pooled output takes, whose weights got no gradient: DDP stopped at the second step."""
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **{**TINY, "deep_output": True, **encoder}).train()
    captions = torch.tensor([[START_ID, 5, 6, END_ID]] * 2)
    logits, _ = net(torch.randn(2, 3, *net.input_size[1:]), captions)
    logits.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_doubly_stochastic_penalty_on_hand_made_alphas():
    # two steps over three regions: column sums (1.0, 0.5, 0.5) -> (0 + 0.25 + 0.25) = 0.5 over 2 words
    alphas = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]])
    assert doubly_stochastic_penalty(alphas).item() == pytest.approx(0.25)
    assert doubly_stochastic_penalty(alphas, weight=2.0).item() == pytest.approx(0.5)
    # masking the second step leaves column sums (1, 0, 0) -> 0 + 1 + 1 = 2 over 1 word
    mask = torch.tensor([[True, False]])
    assert doubly_stochastic_penalty(alphas, mask).item() == pytest.approx(2.0)


def test_the_attention_regulariser_weighs_against_the_words_as_in_the_papers_loss():
    """Xu et al.'s loss is a caption's summed negative log-likelihood plus λ Σ_p (1 - Σ_t α_tp)²; over words, as
    the cross-entropy is averaged, the regulariser is that loss's term over the batch's words (it had been averaged
    per caption, as many times stronger as captions have words)."""
    torch.manual_seed(0)
    alphas = torch.rand(3, 5, 4).softmax(dim=-1)
    lengths = torch.tensor([5, 2, 3])
    mask = torch.arange(5)[None] < lengths[:, None]
    logits, targets = torch.randn(3, 5, 7), torch.randint(1, 7, (3, 5)).masked_fill(~mask, 0)
    papers = sum(F.cross_entropy(logits[b, :n], targets[b, :n], reduction="sum")
                 + 0.7 * (1 - alphas[b, :n].sum(dim=0)).square().sum() for b, n in enumerate(lengths))
    ours = (F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=0)
            + doubly_stochastic_penalty(alphas, mask, weight=0.7))
    assert ours.item() == pytest.approx(papers.item() / lengths.sum().item(), rel=1e-6)


def test_greedy_outputs_words_and_maps(scripted, images):
    out = scripted.greedy_decode(images, max_len=6)
    assert len(out.tokens) == len(out.attention) == 3
    for ids, maps in zip(out.tokens, out.attention):
        assert len(ids) <= 6 and maps.shape == (len(ids), 4, 4)
        assert not ((ids == END_ID) | (ids == PAD_ID) | (ids == START_ID)).any()
        assert torch.allclose(maps.sum((-1, -2)), torch.ones(len(ids)), atol=1e-5)


def test_beam_size_one_equals_greedy(scripted, images):
    greedy = scripted.greedy_decode(images, max_len=8)
    beam = scripted.beam_search(images, beam_size=1, max_len=8, length_penalty=0.0)
    for g, b in zip(greedy.tokens, beam.tokens):
        assert g.tolist() == b.tolist()
    assert torch.allclose(greedy.scores, beam.scores, atol=1e-5)
    for g, b in zip(greedy.attention, beam.attention):
        assert torch.allclose(g, b, atol=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batched_beam_equals_per_image_beam(scripted, images, length_penalty):
    batched = scripted.beam_search(images, beam_size=4, max_len=8, length_penalty=length_penalty)
    for i in range(len(images)):
        single = scripted.beam_search(images[i : i + 1], beam_size=4, max_len=8, length_penalty=length_penalty)
        assert batched.tokens[i].tolist() == single.tokens[0].tolist()
        assert torch.allclose(batched.attention[i], single.attention[0], atol=1e-5)
        assert batched.scores[i].item() == pytest.approx(single.scores[0].item(), abs=1e-4)


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(scripted, images):
    greedy = scripted.greedy_decode(images, max_len=8)
    beam = scripted.beam_search(images, beam_size=5, max_len=8, length_penalty=0.0)
    assert (beam.scores >= greedy.scores - 1e-5).all()


def test_vit_encoder_uses_patch_grid():
    torch.manual_seed(0)
    net = create_model("sat_vit_small_patch16_224", vocab_size=VOCAB, grid_size=2, embed_dim=8, hidden_dim=8,
                       attn_dim=8, encoder_kwargs=dict(img_size=32, depth=1, embed_dim=24, num_heads=2)).eval()
    assert net.encode(torch.randn(1, 3, 32, 32)).shape == (1, 4, 24)
    assert net.input_size == (3, 32, 32)


def test_tiny_vocabulary_is_refused():
    with pytest.raises(ConfigError, match="vocab_size=2"):
        create_model("sat_cbam_resnet_scenes", vocab_size=2)


def _encoder_size_kwargs(name):
    # ViT encoders fix their input size at build time; CNNs take any size.
    return {"encoder_kwargs": {"img_size": 32}} if "vit" in name else {}


@pytest.mark.parametrize("name", list_models("sat_*"))
def test_every_captioner_trains_and_decodes(name):
    torch.manual_seed(0)
    net = create_model(name, vocab_size=VOCAB, img_size=32, grid_size=2, **_encoder_size_kwargs(name)).train()
    captions = torch.tensor([[START_ID, 5, 6, END_ID], [START_ID, 7, END_ID, PAD_ID]])
    logits, alphas = net(torch.randn(2, 3, 32, 32), captions)
    assert logits.shape == (2, 3, VOCAB) and alphas.shape == (2, 3, 4) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    decoded = net.eval().beam_search(torch.randn(2, 3, 32, 32), beam_size=2, max_len=3)
    assert [maps.shape[1:] for maps in decoded.attention] == [(2, 2)] * 2


def test_decoding_a_train_mode_model_equals_its_eval_copy_and_leaves_it_as_it_was(images):
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **{**TINY, "dropout": 0.5}).train()
    net.encoder.bn1.eval()  # a frozen norm, as fine-tuning recipes keep some; its mode must survive too
    reference = copy.deepcopy(net).eval()
    modes = [m.training for m in net.modules()]
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    for search in (lambda m: m.greedy_decode(images, max_len=6), lambda m: m.beam_search(images, beam_size=3, max_len=6)):
        got, expected = search(net), search(reference)
        assert [t.tolist() for t in got.tokens] == [t.tolist() for t in expected.tokens]
        assert torch.allclose(got.scores, expected.scores, atol=1e-5)
    assert all(torch.equal(b, buffers[name]) for name, b in net.named_buffers())  # running stats unchanged
    assert [m.training for m in net.modules()] == modes


@pytest.mark.parametrize("search, settings, message", [
    ("beam_search", dict(beam_size=0), "beam_size=0: must be >= 1, a whole number (1 decodes greedily)"),
    ("beam_search", dict(beam_size=-1), "beam_size=-1: must be >= 1, a whole number (1 decodes greedily)"),
    ("beam_search", dict(beam_size=2.5), "beam_size=2.5: must be >= 1, a whole number (1 decodes greedily)"),
    ("beam_search", dict(beam_size=True), "beam_size=True: must be >= 1, a whole number (1 decodes greedily)"),
    ("beam_search", dict(max_len=0), "max_len=0: a caption needs at least one word; give a whole number >= 1"),
    ("greedy_decode", dict(max_len=0), "max_len=0: a caption needs at least one word; give a whole number >= 1"),
    ("greedy_decode", dict(max_len=1.5), "max_len=1.5: a caption needs at least one word; give a whole number >= 1"),
])
def test_decoding_refuses_settings_that_give_no_caption_in_one_line(model, images, search, settings, message):
    with pytest.raises(ConfigError) as refused:
        getattr(model, search)(images, **settings)
    assert str(refused.value) == message


@pytest.mark.parametrize("beam_size", [True, 1.0, 2.5])
def test_task_decode_leaves_beam_size_checks_to_the_model(model, images, beam_size):
    from visattn.inference.captioner import decode

    with pytest.raises(ConfigError, match=f"^beam_size={beam_size}: must be >= 1, a whole number"):
        decode(model, images, beam_size=beam_size)


@pytest.mark.parametrize("search", ["greedy_decode", "beam_search"])
def test_an_empty_batch_decodes_to_no_captions(model, images, search):
    decoded = getattr(model, search)(images[:0])
    assert decoded.tokens == [] and decoded.attention == [] and decoded.scores.shape == (0,)


def test_teacher_forcing_refuses_captions_without_a_word_to_predict(model, images):
    with pytest.raises(ConfigError) as refused:
        model(images, torch.full((3, 1), START_ID))
    assert str(refused.value) == ("captions of shape (3, 1): captions need START and at least one more token; "
                                  "give (B, L) ids with L >= 2")


@pytest.mark.parametrize("captions, message", [
    (torch.tensor([[START_ID, VOCAB, END_ID]] * 3), f"captions hold token id {VOCAB} but vocab_size={VOCAB}"),
    (torch.tensor([[START_ID, -1, END_ID]] * 3), f"captions hold token id -1 but vocab_size={VOCAB}"),
    (torch.tensor([[START_ID, END_ID]]), "1 captions for 3 images; give one caption row per image"),
    (torch.tensor([[1.0, 2.0]] * 3), "captions are torch.float32; give token ids (B, L) as a torch.long tensor"),
    ([[START_ID, END_ID]] * 3, "captions are list; give token ids (B, L) as a torch.long tensor"),
])
def test_teacher_forcing_names_captions_that_do_not_fit_the_model(model, images, captions, message):
    """Each had been torch's error: "index out of range in self", a size mismatch deep in torch.cat, a dtype error."""
    with pytest.raises(ConfigError) as refused:
        model(images, captions)
    assert str(refused.value).startswith(message)


def test_teacher_forcing_an_empty_batch_gives_empty_logits_and_maps(model):
    logits, alphas = model(torch.zeros(0, 3, 32, 32), torch.zeros(0, 5, dtype=torch.long))
    assert logits.shape == (0, 4, VOCAB) and alphas.shape == (0, 4, model.encode(torch.zeros(1, 3, 32, 32)).shape[1])


@pytest.mark.parametrize("encoder_name, img_size, grid", [("vit_tiny_patch4_28", 56, 7), ("timm:vit_tiny_patch16_224", 64, 2)])
def test_vit_encoder_is_built_for_img_size(encoder_name, img_size, grid):
    torch.manual_seed(0)
    net = ShowAttendTell(vocab_size=VOCAB, encoder_name=encoder_name, encoder_kwargs={"depth": 1}, img_size=img_size,
                         grid_size=grid, embed_dim=8, hidden_dim=8, attn_dim=8).eval()
    assert net.input_size == (3, img_size, img_size)
    assert tuple(net.encoder.patch_embed.img_size) == (img_size, img_size)
    decoded = net.greedy_decode(torch.randn(1, 3, img_size, img_size), max_len=3)
    assert decoded.attention[0].shape[1:] == (grid, grid)


@pytest.mark.parametrize("encoder_name, padded", [("vit_tiny_patch16_224", False), ("timm:vit_tiny_patch16_224", False),
                                                   ("timm:vit_tiny_patch16_224", True)])
def test_a_vit_encoder_of_any_size_lays_out_the_inputs_grid(encoder_name, padded):
    """A ``dynamic_img_size`` encoder's tokens were laid out on the grid it was built for: a 64x32 image's 8 tokens
    as 2x4 instead of 4x2 (silently transposed), and a 48x48 image's as a RuntimeError."""
    torch.manual_seed(0)
    encoder_kwargs = {"depth": 1, "dynamic_img_size": True, **({"dynamic_img_pad": True} if padded else {})}
    net = ShowAttendTell(vocab_size=VOCAB, encoder_name=encoder_name, img_size=32, grid_size=2, embed_dim=8,
                         hidden_dim=8, attn_dim=8, encoder_kwargs=encoder_kwargs).eval()
    for size in ((64, 32), (48, 48), *([(40, 24)] if padded else [])):  # timm's padding takes 40x24 as 48x32
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            tokens = net.encoder.forward_features(images)[:, net.encoder.num_prefix_tokens:]  # (B, h * w, C)
            expected = tokens.transpose(1, 2).reshape(2, -1, -(-size[0] // 16), -(-size[1] // 16))
            torch.testing.assert_close(net.feature_map(images), expected, rtol=0, atol=0)


@pytest.mark.parametrize("encoder_name, encoder_kwargs", [
    ("timm:swin_tiny_patch4_window7_224", {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                           "window_size": 2}),
    ("timm:mambaout_femto", {}),
])
def test_a_channels_last_timm_encoder_is_read_as_such_and_built_for_img_size(encoder_name, encoder_kwargs):
    """Its (B, H, W, C) features were pooled over W and C, a traceback at the attention; a Swin kept timm's 224 px,
    and the size error's hint (model_kwargs.img_size) led nowhere."""
    torch.manual_seed(0)
    net = ShowAttendTell(vocab_size=VOCAB, encoder_name=encoder_name, encoder_kwargs=encoder_kwargs, img_size=64,
                         grid_size=2, embed_dim=8, hidden_dim=8, attn_dim=8).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.feature_map(images), net.encoder.forward_features(images).permute(0, 3, 1, 2))
    assert net.greedy_decode(images, max_len=3).attention[0].shape[1:] == (2, 2)
    if "swin" in encoder_name:
        assert tuple(net.encoder.patch_embed.img_size) == (64, 64)


@pytest.mark.parametrize("grid_size", [0, -2, 2.5, None, (2, 0), True])
def test_a_grid_size_that_is_no_count_is_one_line(grid_size):
    """0 trained a run of NaN losses, every step skipped, and exited 0; -2 was a traceback at the first step."""
    with pytest.raises(ConfigError, match=r"^grid_size=.*: give a whole number >= 1 or a \(height, width\) pair"):
        ShowAttendTell(vocab_size=VOCAB, encoder_name="vit_tiny_patch4_28", encoder_kwargs={"depth": 1}, img_size=28,
                       grid_size=grid_size)


def test_vit_encoder_size_given_twice_must_agree():
    ShowAttendTell(vocab_size=VOCAB, encoder_name="vit_tiny_patch4_28", encoder_kwargs={"depth": 1, "img_size": (56, 56)},
                   img_size=56)
    with pytest.raises(ConfigError) as refused:
        ShowAttendTell(vocab_size=VOCAB, encoder_name="vit_tiny_patch4_28", encoder_kwargs={"depth": 1, "img_size": 28},
                       img_size=56)
    assert str(refused.value) == "img_size=56 but encoder_kwargs img_size=28: give the size once, as img_size"


class _SoftmaxInFloat32(torch.overrides.TorchFunctionMode):
    """What CUDA autocast does and CPU autocast does not: (log-)softmax of bf16 runs in, and returns, float32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("softmax", "log_softmax") and args[0].dtype == torch.bfloat16:
            with torch.autocast("cpu", enabled=False):
                return func(args[0].float(), *args[1:], **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def test_beam_search_under_bf16_autocast_with_float32_softmax_as_on_cuda():
    """It stored float32 scores into bf16 buffers: index_put_ refused (benchmarks/beam_search.py --device cuda --precision bf16)."""
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), _SoftmaxInFloat32():
        decoded = net.beam_search(images, beam_size=3, max_len=4)
    assert len(decoded.tokens) == 3 and decoded.scores.dtype == torch.float32


@pytest.mark.parametrize("bias", [True, False])
def test_sigmoid_lstm_cell_equals_nn_lstm_cell_in_values_and_gradients(bias):
    torch.manual_seed(0)
    reference, cell = torch.nn.LSTMCell(6, 5, bias=bias), SigmoidLSTMCell(6, 5, bias=bias)
    cell.load_state_dict(reference.state_dict())  # same parameter names: checkpoints load either way
    x = torch.randn(4, 6, requires_grad=True)
    state = (torch.randn(4, 5) * 3, torch.randn(4, 5) * 3)  # large enough to reach tanh's flat ends
    outputs = []
    for module in (reference, cell):
        h, c = module(x, state)
        (h * torch.arange(5) + c).sum().backward()
        outputs.append((h, c, x.grad.clone(), module.weight_hh.grad.clone()))
        x.grad = None
    for expected, actual in zip(*outputs):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_onednn_linear_equals_f_linear_and_takes_only_large_fp32_products_no_gradient_needs():
    """Products of 2-d rows or of any leading dims (the attention's score) give F.linear's values."""
    torch.manual_seed(0)
    x, weight, bias, add = torch.randn(320, 256), torch.randn(1024, 256), torch.randn(1024), torch.randn(320, 1024)
    with torch.no_grad():
        assert _onednn_computes(x, weight)
        torch.testing.assert_close(onednn_linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(onednn_linear(x, weight, add=add), torch.addmm(add, x, weight.t()), rtol=1e-5, atol=1e-4)
        strided = weight[:, 192:]  # the LSTM's context columns, not contiguous
        torch.testing.assert_close(onednn_linear(x[:, :64], strided), x[:, :64] @ strided.t(), rtol=1e-5, atol=1e-4)
        assert not _onednn_computes(x[:5, :64], weight[:, :64])  # 5 x 64 x 1024: F.linear's is faster
        gates, score = torch.rand(64, 5, 64, 128), weight[:1, :128]  # the attention's (B, M, P, attn_dim) activation
        assert _onednn_computes(gates, score)
        for rows in (gates, gates.transpose(1, 2)):  # any leading dims, contiguous or not
            torch.testing.assert_close(onednn_linear(rows, score, bias[:1]), F.linear(rows, score, bias[:1]),
                                       rtol=1e-5, atol=1e-4)
        assert not _onednn_computes(x.double(), weight.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _onednn_computes(x, weight) and onednn_linear(x, weight).dtype == torch.bfloat16
    trained = weight.clone().requires_grad_()
    assert not _onednn_computes(x, trained)
    onednn_linear(x, trained, add=add).sum().backward()
    torch.testing.assert_close(trained.grad, x.sum(0).expand(1024, 256), rtol=1e-5, atol=1e-4)


def test_sigmoid_lstm_cell_at_decoding_size_without_gradients_equals_nn_lstm_cell():
    """Decoding's products (320 rows) go through oneDNN; the cell still gives nn.LSTMCell's state."""
    torch.manual_seed(0)
    reference, cell = torch.nn.LSTMCell(192, 256), SigmoidLSTMCell(192, 256)
    cell.load_state_dict(reference.state_dict())
    x, state = torch.randn(320, 192), (torch.randn(320, 256), torch.randn(320, 256))
    with torch.no_grad():
        assert _onednn_computes(state[0], cell.weight_hh)
        for expected, actual in zip(reference(x, state), cell(x, state)):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_sigmoid_lstm_cell_takes_no_state_and_unbatched_input_like_nn_lstm_cell():
    torch.manual_seed(0)
    reference, cell = torch.nn.LSTMCell(6, 5), SigmoidLSTMCell(6, 5)
    cell.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6)
    for expected, actual in zip(reference(x), cell(x)):
        torch.testing.assert_close(actual, expected)
    state = (torch.randn(5), torch.randn(5))
    for expected, actual in zip(reference(x[0], state), cell(x[0], state)):
        assert actual.shape == (5,)
        torch.testing.assert_close(actual, expected)


def reference_beam_search(model, image, beam_size, max_len, length_penalty):
    """Beam search written out hypothesis by hypothesis in plain Python: the K best continuations
    of the K hypotheses each step, a finished one continuing only with PAD at its score, until
    every hypothesis has ended; then the best by ``score / length ** length_penalty``."""
    from visattn.models.show_attend_tell import _word_log_probs

    features = model.encode(image[None])
    projected = model.attention.project_features(features)
    beams = [([], 0.0, model.init_state(features), False)]  # (words, score, state, finished)
    for _ in range(max_len):
        candidates = []
        for words, score, state, finished in beams:
            if finished:
                candidates.append((score, words + [PAD_ID], state, True))
                continue
            last = torch.tensor([words[-1] if words else START_ID])
            logits, next_state, _ = model.step(features, projected, last, state)
            for word, log_p in enumerate(_word_log_probs(logits)[0].tolist()):
                candidates.append((score + log_p, words + [word], next_state, word == END_ID))
        candidates.sort(key=lambda c: -c[0])
        beams = [(words, score, state, finished) for score, words, state, finished in candidates[:beam_size]]
        if all(finished for *_, finished in beams):
            break
    lengths = [max(sum(w != PAD_ID for w in words), 1) for words, *_ in beams]
    normalised = [score / n ** length_penalty for (_, score, _, _), n in zip(beams, lengths)]
    words = beams[max(range(len(beams)), key=normalised.__getitem__)][0]
    return words[:words.index(END_ID)] if END_ID in words else [w for w in words if w != PAD_ID]


@pytest.fixture(scope="module")
def ending(scripted):
    """The scripted decoder with END far likelier than any word once a hypothesis is as long as its
    image's length (1 to 5 steps, from its features), so images leave the search at different steps."""
    torch.manual_seed(0)  # the lengths come from the features: other test orders must not change them
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()

    def init_state(features):
        h, c = scripted.init_state(features)
        c = torch.zeros_like(c)
        c[:, 1] = 1 + features[:, :, 0].argmax(1) % 5  # (steps so far, length)
        return h, c

    def step(features, projected, words, state, *_):
        logits, (h, c), alpha = scripted.step(features, projected, words, state)
        c = c.clone()
        c[:, 0] += 1
        logits[:, END_ID] += 30.0 * (c[:, 0] >= c[:, 1])
        return logits, (h, c), alpha

    net.init_state, net.step = init_state, step
    return net


@pytest.mark.parametrize("max_len", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("decoder", ["scripted", "ending"])
def test_batched_beam_search_equals_a_plain_python_beam_search(decoder, max_len, length_penalty, request):
    """Images that leave the search at different steps, at max_len or cut off by it, read back their own words."""
    model = request.getfixturevalue(decoder)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batched = model.beam_search(images, beam_size=3, max_len=max_len, length_penalty=length_penalty)
    expected = [reference_beam_search(model, image, 3, max_len, length_penalty) for image in images]
    assert [t.tolist() for t in batched.tokens] == expected


def test_the_ending_decoder_sends_images_out_of_the_search_at_different_steps(ending):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lengths = sorted(len(t) for t in ending.beam_search(images, beam_size=3, max_len=8).tokens)
    assert len(set(lengths)) >= 3 and lengths[0] < lengths[-1] <= 4, lengths


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_caption_cut_at_max_len_is_flagged_unfinished(ending, beam_size):
    """A caption of max_len words had ended on END or been cut: only its length told, and only if max_len was known."""
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for max_len, some_cut in ((2, True), (8, False)):
        out = (ending.greedy_decode(images, max_len=max_len) if beam_size == 1 else
               ending.beam_search(images, beam_size=beam_size, max_len=max_len))
        assert out.finished.dtype == torch.bool and out.finished.shape == (8,)
        assert out.finished.tolist() == [len(t) < max_len for t in out.tokens]
        assert (not out.finished.all()) == some_cut
    assert ending.greedy_decode(images[:0]).finished.shape == (0,)


def test_decoded_captions_built_with_three_arguments_say_finished_is_not_known():
    """`finished` became a required field: code building DecodedCaptions(tokens, attention, scores) broke with a
    TypeError. Built so, it is None (not known), survives .to(), and only a caption shorter than max_len words is
    known to be finished (decoding stops early only at END)."""
    from visattn.models.show_attend_tell import DecodedCaptions

    tokens = [torch.tensor([4, 5]), torch.tensor([4, 5, 6])]
    decoded = DecodedCaptions(tokens, [torch.zeros(2, 2, 2), torch.zeros(3, 2, 2)], torch.zeros(2))
    assert decoded.finished is None and decoded.to("cpu").finished is None
    assert decoded.to("cpu").tokens[1].tolist() == [4, 5, 6]
    assert decoded.finished_within(3) == [True, None] and decoded.finished_within(4) == [True, True]
    flagged = DecodedCaptions(tokens, decoded.attention, decoded.scores, torch.tensor([True, False]))
    assert flagged.to("cpu").finished.tolist() == flagged.finished_within(3) == [True, False]


def test_sigmoid_lstm_cell_scripts_and_refuses_other_ranks_as_nn_lstm_cell_does():
    cell = SigmoidLSTMCell(6, 5)
    scripted = torch.jit.script(cell)
    x = torch.randn(3, 6)
    for expected, actual in zip(cell(x), scripted(x)):
        torch.testing.assert_close(actual, expected)
    for module in (torch.nn.LSTMCell(6, 5), cell):
        with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
            module(torch.randn(2, 3, 6))


@pytest.mark.parametrize("name", list_models("sat_*"))
def test_each_captioners_grid_holds_distinct_regions_of_its_encoders_map(name):
    """sat_resnet50 pooled ResNet-50's 7x7 map at 224 px up to 14x14: each region copied into four slots."""
    model = create_model(name, vocab_size=8).eval()
    with torch.no_grad():
        features = model.encoder.forward_features(torch.randn(1, *model.input_size))
    grid = (features.shape[-2:] if features.ndim == 4 else
            getattr(model.encoder.patch_embed, "grid_size", None))
    assert model.grid[0] <= grid[0] and model.grid[1] <= grid[1]


def test_encoder_kwargs_add_to_the_scenes_captioners_encoder_layout():
    """They replaced it: drop_path_rate=0.1 built a 3-stage encoder (4.10M parameters, not 3.25M) without a word."""
    from visattn.layers.drop_path import DropPath

    built = create_model("sat_cbam_resnet_scenes")
    dropping = create_model("sat_cbam_resnet_scenes", encoder_kwargs={"drop_path_rate": 0.1})
    assert {k: v.shape for k, v in dropping.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    assert [m.drop_prob for m in dropping.encoder.modules() if isinstance(m, DropPath)][-1] == pytest.approx(0.1)


def _papers_step(net, features, words, state):
    """One decoder step written out from Xu et al.'s equations with ``net``'s weights and ``torch.nn.LSTMCell``:
    α from the additive attention, ``z = sigmoid(f_beta(h)) * Σ_p α_p a_p``, the LSTM fed ``[E y_{t-1}, z]``
    and, with deep output, logits ``fc(E y_{t-1} + L_h h_t + L_z z)`` (eq. 7)."""
    h, c = state
    hidden = torch.tanh(net.attention.feature_proj(features) + net.attention.query_proj(h)[:, None])
    alpha = net.attention.score(hidden).squeeze(-1).softmax(-1)  # (B, P)
    beta = torch.sigmoid(net.f_beta(h))
    z = beta * torch.einsum("bp,bpc->bc", alpha, features)
    cell = torch.nn.LSTMCell(net.lstm.input_size, net.lstm.hidden_size)
    cell.load_state_dict(net.lstm.state_dict())
    embedded = net.embed(words)
    h, c = cell(torch.cat([embedded, z], dim=1), (h, c))
    out = embedded + net.out_h(h) + net.out_z(z) if net.deep_output else h
    return net.fc(out), (h, c), alpha


@torch.no_grad()
def test_the_initial_lstm_state_is_tanh_of_a_linear_map_of_the_mean_region_feature(model):
    """h_0 = tanh(f_init_h(mean_p a_p)) (the paper's section 3.1.2): taken from the first region alone, it passed."""
    features = torch.randn(2, 16, model.feature_dim, generator=torch.Generator().manual_seed(4))
    features[:, 0] += 5.0  # the first region far from the mean
    mean = features.mean(dim=1)
    h, c = model.init_state(features)
    torch.testing.assert_close(h, torch.tanh(F.linear(mean, model.init_h.weight, model.init_h.bias)))
    torch.testing.assert_close(c, torch.tanh(F.linear(mean, model.init_c.weight, model.init_c.bias)))


@torch.no_grad()
def test_the_context_gate_is_a_sigmoid_of_the_hidden_state_as_in_the_paper():
    """β = sigmoid(f_beta(h)) gates the context (section 4.2.1); a tanh gate (0 where the sigmoid gives 0.5) passed."""
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    net.f_beta.weight.zero_()
    net.f_beta.bias.copy_(torch.linspace(-3.0, 3.0, net.feature_dim))  # β = sigmoid(bias): 0.05 ... 0.95
    features = torch.randn(2, 16, net.feature_dim, generator=torch.Generator().manual_seed(5))
    state = net.init_state(features)
    words = torch.tensor([4, 7])
    logits, (h, c), alpha = net.step(features, net.attention.project_features(features), words, state)
    expected_logits, (expected_h, expected_c), expected_alpha = _papers_step(net, features, words, state)
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(h, expected_h)
    torch.testing.assert_close(c, expected_c)
    torch.testing.assert_close(logits, expected_logits)


@torch.no_grad()
def test_deep_output_adds_the_previous_words_embedding_to_the_hidden_and_context_terms():
    """The paper's eq. 7 predicts from E y_{t-1} + L_h h_t + L_z z_t; leaving out the word's embedding passed."""
    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    assert net.deep_output
    features = torch.randn(2, 16, net.feature_dim, generator=torch.Generator().manual_seed(6))
    state = net.init_state(features)
    words = torch.tensor([4, 7])
    projected = net.attention.project_features(features)
    logits, _, _ = net.step(features, projected, words, state)
    torch.testing.assert_close(logits, _papers_step(net, features, words, state)[0])
    for layer in (net.out_h, net.out_z):  # L_h = L_z = 0: the logits are fc(E y_{t-1}) alone
        layer.weight.zero_()
        layer.bias.zero_()
    logits, _, _ = net.step(features, projected, words, state)
    torch.testing.assert_close(logits, F.linear(net.embed.weight[words], net.fc.weight, net.fc.bias))


@torch.no_grad()
def test_step_t_logits_depend_only_on_the_words_before_it(model, images):
    """Teacher forcing's logits at step t predict captions[:, t + 1] from captions[:, :t + 1]; fed the very
    word they predict (captions[:, t + 1]), they passed."""
    captions = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 4, 9, END_ID, PAD_ID],
                             [START_ID, 8, 9, 10, 11]])
    logits, alphas = model(images, captions)
    for k in range(1, captions.shape[1]):
        changed = captions.clone()
        changed[:, k] = torch.where(captions[:, k] == 3, 4, 3)  # another word at position k
        changed_logits, changed_alphas = model(images, changed)
        torch.testing.assert_close(changed_logits[:, :k], logits[:, :k], rtol=0, atol=0)
        torch.testing.assert_close(changed_alphas[:, :k], alphas[:, :k], rtol=0, atol=0)
        if k < logits.shape[1]:
            assert not torch.allclose(changed_logits[:, k], logits[:, k], atol=1e-4), k


@torch.no_grad()
def test_teacher_forcing_equals_the_decoding_recurrence_fed_the_same_words(model, images):
    """forward() must be the paper's recurrence fed captions[:, t] at step t; fed captions[:, t + 1], it passed."""
    captions = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 4, 9, END_ID, PAD_ID],
                             [START_ID, 8, 9, 10, 11]])
    logits, alphas = model(images, captions)
    features = model.encode(images)
    state = model.init_state(features)
    for t in range(captions.shape[1] - 1):
        step_logits, state, alpha = _papers_step(model, features, captions[:, t], state)
        torch.testing.assert_close(logits[:, t], step_logits)
        torch.testing.assert_close(alphas[:, t], alpha)


def test_beam_search_counts_end_in_the_length_that_normalises_a_captions_score():
    """The score is log p / length ** length_penalty with END counted, as documented; leaving END out of the length
    flips the winner here (a finished [3] against a cut-off [4, 6, 7]) and had passed."""
    from math import log

    torch.manual_seed(0)
    net = create_model("sat_cbam_resnet_scenes", **TINY).eval()
    table = torch.zeros(VOCAB, VOCAB)  # log-probabilities of the next word given the previous one
    for previous, choices in {START_ID: {3: 0.5, 4: 0.5}, 3: {END_ID: 0.8, 5: 0.2}, 4: {6: 0.55, 8: 0.45},
                              6: {7: 0.6, 10: 0.4}}.items():
        table[previous] = float("-inf")
        for word, p in choices.items():
            table[previous, word] = log(p)

    def step(features, projected, words, state, *_):
        return table[words], state, torch.full((len(words), 16), 1 / 16)

    net.step = step
    # beams: [3, END] with p = 0.4 (2 tokens with END) and [4, 6, 7] with p = 0.165, cut off by max_len = 3
    out = net.beam_search(torch.zeros(1, 3, 32, 32), beam_size=2, max_len=3, length_penalty=1.0)
    assert log(0.4) / 2 > log(0.165) / 3 > log(0.4) / 1  # END counted: [3] wins; END left out: [4, 6, 7]
    assert out.tokens[0].tolist() == [3] == reference_beam_search(net, torch.zeros(3, 32, 32), 2, 3, 1.0)
    assert out.scores[0].item() == pytest.approx(log(0.4) / 2, rel=1e-5)
