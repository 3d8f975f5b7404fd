import pytest
import torch

from genforge.models.dcgan import Discriminator, Generator, init_weights, sample_latent, stages_for


@pytest.mark.parametrize("side,channels,stages", [(28, 1, 2), (32, 3, 3), (64, 3, 4)])
def test_dcgan_shapes_follow_the_image(side, channels, stages):
    assert stages_for(side) == stages
    G, D = Generator(side, channels, z_dim=16, width=8), Discriminator(side, channels, width=8)
    init_weights(G), init_weights(D)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, side, side)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert D(x).shape == (3,)


def test_unsupported_side_is_a_clear_error():
    with pytest.raises(ValueError, match="image_size"):
        stages_for(30)


def test_conditional_labels_change_the_output():
    torch.manual_seed(0)
    G = Generator(28, 1, z_dim=16, width=8, num_classes=10, embed_dim=8).eval()
    D = Discriminator(28, 1, width=8, num_classes=10).eval()
    init_weights(G), init_weights(D)
    z = torch.randn(4, 16)
    a = G(z, torch.full((4,), 3))
    b = G(z, torch.full((4,), 7))
    assert not torch.allclose(a, b)
    assert torch.equal(a, G(z, torch.full((4,), 3)))
    x = torch.randn(4, 1, 28, 28)
    assert not torch.allclose(D(x, torch.full((4,), 3)), D(x, torch.full((4,), 7)))
    with pytest.raises(ValueError, match="labels"):
        G(z)


def test_infogan_code_is_part_of_the_latent_and_predicted_by_d():
    torch.manual_seed(0)
    G = Generator(28, 1, z_dim=16, width=8, codes=4).eval()
    D = Discriminator(28, 1, width=8, codes=4).eval()
    init_weights(G), init_weights(D)
    z, c = sample_latent(6, 16, 4, torch.Generator().manual_seed(1))
    assert z.shape == (6, 20) and c.shape == (6,)
    assert torch.equal(z[:, 16:].argmax(1), c) and torch.equal(z[:, 16:].sum(1), torch.ones(6))
    other = z.clone()
    other[:, 16:] = torch.nn.functional.one_hot((c + 1) % 4, 4).float()
    assert not torch.allclose(G(z), G(other))  # the code steers the image
    logit, q = D(G(z), code_logits=True)
    assert logit.shape == (6,) and q.shape == (6, 4)
    assert torch.equal(logit, D(G(z)))
    plain, none = sample_latent(3, 16, 0, torch.Generator().manual_seed(1))
    assert plain.shape == (3, 16) and none is None


@pytest.mark.parametrize("options", [{"hidden": 16}, {"spectral_norm": True}, {"extra_layers": 2}])
def test_discriminator_options_keep_the_interface(options):
    torch.manual_seed(0)
    G = Generator(28, 1, z_dim=16, width=8, extra_layers=options.get("extra_layers", 0))
    D = Discriminator(28, 1, width=8, **options)
    init_weights(G), init_weights(D)
    x = G(torch.randn(4, 16))
    assert x.shape == (4, 1, 28, 28) and D(x).shape == (4,)
    bns = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if options.get("spectral_norm"):
        # spectral norm replaces BatchNorm, and every weight is normalised
        assert not bns
        assert all(torch.nn.utils.parametrize.is_parametrized(m, "weight")
                   for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    if options.get("hidden"):
        assert D.head.in_features == 16
    if options.get("extra_layers"):
        assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in D.modules()) == 2
        assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in G.modules()) == 2


@pytest.mark.parametrize("options", [{}, {"num_classes": 5, "hidden": 16}, {"extra_layers": 1}])
def test_stacked_batches_in_d_equal_separate_calls(options):
    """D(cat([real, fake]), groups=2) gives the same logits, gradients and BatchNorm running statistics as
    D(real) then D(fake): each half is normalised with its own batch statistics, in order."""
    torch.manual_seed(0)
    D1 = Discriminator(28, 1, width=8, **options).double()
    init_weights(D1)
    D2 = Discriminator(28, 1, width=8, **options).double()
    D2.load_state_dict(D1.state_dict())
    real, fake = torch.randn(6, 1, 28, 28, dtype=torch.float64), torch.randn(6, 1, 28, 28, dtype=torch.float64)
    labels = (torch.arange(6) % 5,) if options.get("num_classes") else ()
    separate = torch.cat([D1(real, *labels), D1(fake, *labels)])
    stacked = D2(torch.cat([real, fake]), *[torch.cat([y, y]) for y in labels], groups=2)
    assert torch.allclose(separate, stacked, atol=1e-10)
    (separate * torch.arange(12.0, dtype=torch.float64)).sum().backward()
    (stacked * torch.arange(12.0, dtype=torch.float64)).sum().backward()
    for (name, p1), p2 in zip(D1.named_parameters(), D2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-10), name
    for (name, b1), b2 in zip(D1.named_buffers(), D2.buffers()):
        assert torch.allclose(b1.double(), b2.double(), atol=1e-12), name
    # and it is not the same as one BatchNorm over the whole stack
    assert not torch.allclose(D2(torch.cat([real, fake]), *[torch.cat([y, y]) for y in labels]), stacked, atol=1e-6)
