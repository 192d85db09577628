"""LPIPS as CD's distance (cm/models/lpips.py, cm/models/lpips_weights.py, docs/methods.md section
8).

The reference is a torch LPIPS written here with the structure of the lpips package (its
ScalingLayer, torchvision's VGG16 `features` Sequential tapped after relu1_2 ... relu5_3,
normalize_tensor, NetLinLayer = Dropout + 1x1 conv, spatial_average, the layer sum) and of
CM's PyTorch code (piq's replace_pooling=True: average pooling; F.interpolate to the LPIPS
size). Its random weights are saved with torch.save in the published files' layouts (legacy
format, as vgg16-397923af.pth and lpips/weights/v0.1/vgg.pth are) and read by our loader.
torchvision does not import beside the pinned torch, so the VGG16 stack is spelled out.
"""

import collections
import dataclasses

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import tiny_config

from cm import config_checks, experiment, keys, methods, modes, schedules, state, train
from cm.methods import cd, losses
from cm.methods.spec import Denoisers
from cm.models import lpips, lpips_weights
from cm.workdir.checkpoint import Checkpointer
from configs import cifar10_cd

nn, F = torch.nn, torch.nn.functional
CHANNELS = (3, 64, 128, 256, 512)  # the lin heads' inputs after the first: 64, 128, 256, 512, 512


class TorchVGG16(nn.Module):
    """torchvision's vgg16().features layout: conv + ReLU per convolution, max pooling after
    each block (indices 0..30), so that state_dict keys are features.<i>.weight / bias."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for out, convs in lpips.VGG16_BLOCKS:
            for _ in range(convs):
                layers += [nn.Conv2d(cin, out, 3, padding=1), nn.ReLU()]
                cin = out
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(4, 2))  # present in the file, unused


class TorchLins(nn.Module):
    """The lpips package's five NetLinLayers with use_dropout=True: lin<k>.model.1.weight."""

    def __init__(self):
        super().__init__()
        for k, (out, _) in enumerate(lpips.VGG16_BLOCKS):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(out, 1, 1, bias=False))
            setattr(self, f"lin{k}", lin)


def torch_lpips(vgg, lins, a, b, resize: int, pooling: str):
    """The reference LPIPS on NCHW [-1, 1] images -> [B] (float64 numpy)."""
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    taps = {3, 8, 15, 22, 29}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

    def features(x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if resize and min(x.shape[2:]) < resize:
            x = F.interpolate(x, size=resize, mode="bilinear")
        x = (x - shift) / scale
        out = []
        for i, layer in enumerate(vgg.features):
            if isinstance(layer, nn.MaxPool2d) and pooling == "avg":
                layer = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)
            x = layer(x)
            if i in taps:
                out.append(x)
            if i == max(taps):
                return out

    def normalize_tensor(f, eps=1e-10):
        return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + eps)

    with torch.no_grad():
        total = 0
        for k, (fa, fb) in enumerate(zip(features(a), features(b), strict=True)):
            diff = (normalize_tensor(fa) - normalize_tensor(fb)) ** 2
            total = total + getattr(lins, f"lin{k}").model(diff).mean([2, 3], keepdim=True)
    return total.reshape(-1).double().numpy()


def _random_nets(seed=0):
    """Random VGG16 and heads; He-normal kernels keep the activations of order one through
    the 13 layers, as trained weights do, and the heads are non-negative."""
    torch.manual_seed(seed)
    vgg, lins = TorchVGG16().eval(), TorchLins().eval()
    for m in vgg.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
    for p in lins.parameters():
        nn.init.uniform_(p, 0.0, 1.0)
    return vgg, lins


def _save(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)  # the published files' format
    return str(path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """(torch vgg, torch lins, vgg path, lin path) of one random LPIPS."""
    vgg, lins = _random_nets()
    folder = tmp_path_factory.mktemp("lpips")
    vgg_path = _save(vgg.state_dict(), folder / "vgg16-397923af.pth")
    lin_path = _save(lins.state_dict(), folder / "vgg.pth")
    return vgg, lins, vgg_path, lin_path


@pytest.fixture(scope="module")
def weights(nets):
    return lpips_weights.load(nets[2], nets[3])


def _images(seed, shape):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize(
    "size, channels, resize, pooling",
    [(8, 3, 16, "max"), (8, 3, 16, "avg"), (16, 3, 0, "max"), (20, 1, 16, "avg")],
)
def test_equals_the_torch_reference(nets, weights, size, channels, resize, pooling):
    """Our LPIPS with the loaded weights = the torch reference with the same ones: 8 x 8
    upsampled to 16, 16 unresized, 20 (odd sides after two poolings, no resize since larger
    than 16) in gray; both poolings. Measured max relative difference about 1e-7."""
    vgg, lins = nets[0], nets[1]
    a = _images(1, (3, size, size, channels))
    b = _images(2, (3, size, size, channels))
    ours = np.asarray(jax.jit(lpips.lpips, static_argnums=(3, 4))(weights, a, b, resize, pooling))
    ref = torch_lpips(vgg, lins, _nchw(a), _nchw(b), resize, pooling)
    assert np.all(ref > 0.1)  # a non-trivial value for each sample
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_upsampling_is_torchs_bilinear():
    """Half-pixel centres with the edges clamped, as F.interpolate(mode="bilinear",
    align_corners=False). By hand, [0, 1] -> 4 pixels: sources -0.25, 0.25, 0.75, 1.25 ->
    clamped 0, 0.25, 0.75, 1 -> [0, 0.25, 0.75, 1]. And 8 -> 16 and 32 -> 224 on noise."""
    row = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1) * jnp.ones((1, 2, 1, 1))
    np.testing.assert_allclose(lpips.upsample(row, 4)[0, 0, :, 0], [0, 0.25, 0.75, 1], atol=1e-7)
    for size, out in ((8, 16), (32, 224)):
        x = _images(3, (2, size, size, 3))
        ref = F.interpolate(_nchw(x), size=out, mode="bilinear").numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(lpips.upsample(jnp.asarray(x), out), ref, atol=1e-6)
    x = jnp.ones((1, 32, 32, 3))
    assert lpips.upsample(x, 16) is x and lpips.upsample(x, 0) is x  # never downsampled


def test_identity_symmetry_and_sign(weights):
    a, b = _images(4, (4, 16, 16, 3)), _images(5, (4, 16, 16, 3))
    fn = jax.jit(lambda x, y: lpips.lpips(weights, x, y, 0, "max"))
    assert np.all(np.abs(np.asarray(fn(a, a))) < 1e-12)  # XLA may round the two branches apart
    np.testing.assert_array_equal(fn(a, b), fn(b, a))
    assert np.all(np.asarray(fn(a, b)) > 0)


def test_unit_normalization_by_hand_and_its_invariance(weights):
    """(3, 4) -> (0.6, 0.8); any positive per-pixel scale of a feature map leaves its unit
    vectors unchanged, so scaling conv5_3's kernel and bias by 3.7 (relu5_3 scaled by 3.7, no
    later layer) leaves LPIPS unchanged, while doubling a head doubles its layer's term."""
    f = jnp.asarray([[[[3.0, 4.0]]]])
    np.testing.assert_allclose(lpips.unit_normalize(f)[0, 0, 0], [0.6, 0.8], rtol=1e-7)
    g = jnp.asarray(_images(6, (2, 3, 3, 8)))
    s = jnp.exp(jnp.asarray(_images(7, (2, 3, 3, 1))) * 3)
    np.testing.assert_allclose(lpips.unit_normalize(g * s), lpips.unit_normalize(g), rtol=1e-6)

    a, b = _images(8, (2, 16, 16, 3)), _images(9, (2, 16, 16, 3))
    terms = jax.jit(lpips.layer_distances, static_argnums=(3, 4))
    base = np.asarray(terms(weights, a, b, 0, "max"))
    scaled = jax.tree.map(lambda w: w, weights)
    scaled["vgg"]["conv5_3"] = jax.tree.map(lambda w: w * 3.7, weights["vgg"]["conv5_3"])
    np.testing.assert_allclose(terms(scaled, a, b, 0, "max"), base, rtol=1e-5)
    doubled = jax.tree.map(lambda w: w, weights)
    doubled["lin"]["relu2_2"] = weights["lin"]["relu2_2"] * 2
    out = np.asarray(terms(doubled, a, b, 0, "max"))
    np.testing.assert_allclose(out[:, 1], 2 * base[:, 1], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(out, 1, axis=1), np.delete(base, 1, axis=1))


def test_loader_layout_and_shapes(nets, weights):
    """conv OIHW -> HWIO, heads [1, C, 1, 1] -> [C], float32, the shapes of `shapes()`."""
    vgg, lins = nets[0], nets[1]
    np.testing.assert_array_equal(
        weights["vgg"]["conv2_1"]["kernel"],
        vgg.features[5].weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        weights["lin"]["relu5_3"], lins.lin4.model[1].weight.detach().reshape(-1)
    )
    got = jax.tree.map(lambda a: (a.shape, a.dtype), weights)
    want = jax.tree.map(lambda s: (s.shape, s.dtype), lpips_weights.shapes())
    assert got == want
    assert lpips_weights.CONV_SPECS["conv5_3"] == (28, 512, 512)


def _one_sentence(message: str):
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message


def test_bad_files_are_refused_with_one_sentence(nets, tmp_path):
    vgg, lins, vgg_path, lin_path = nets
    cases = []
    with pytest.raises(FileNotFoundError) as e:
        lpips_weights.load(str(tmp_path / "nope.pth"), lin_path)
    cases.append((e, ["method.lpips_vgg_path", lpips_weights.VGG_URL]))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError) as e:
        lpips_weights.load(vgg_path, str(junk))
    cases.append((e, ["method.lpips_lin_path", "not a readable torch state dict"]))
    no_dropout = {k.replace("model.1", "model.0"): v for k, v in lins.state_dict().items()}
    with pytest.raises(ValueError) as e:
        lpips_weights.load(vgg_path, _save(no_dropout, tmp_path / "lin0.pth"))
    cases.append((e, ["has no tensor lin0.model.1.weight", lpips_weights.LIN_URL]))
    wrong = dict(vgg.state_dict())
    wrong["features.0.weight"] = wrong["features.0.weight"][:, :1]
    with pytest.raises(ValueError) as e:
        lpips_weights.load(_save(wrong, tmp_path / "vgg.pth"), lin_path)
    cases.append((e, ["features.0.weight of shape (64, 1, 3, 3)", "(64, 3, 3, 3)"]))
    negative = dict(lins.state_dict())
    negative["lin2.model.1.weight"] = -negative["lin2.model.1.weight"]
    with pytest.raises(ValueError) as e:
        lpips_weights.load(vgg_path, _save(negative, tmp_path / "neg.pth"))
    cases.append((e, ["negative weights in lin2"]))
    for error, parts in cases:
        _one_sentence(str(error.value))
        for part in parts:
            assert part in str(error.value)


def test_lpips_only_for_cd_and_its_fields_checked():
    c = tiny_config(method__distance="lpips")  # iCT
    with pytest.raises(ValueError, match=r"^method.distance='lpips' is invalid: .*\['cd'\]") as e:
        config_checks.check(c, "summary")
    _one_sentence(str(e.value))
    with pytest.raises(ValueError, match="a frozen network that this method does not carry"):
        losses.get_distance("lpips")
    c = tiny_config(method__name="cd", method__distance="lpips", method__lpips_resize=16)
    config_checks.check(c, "summary")
    for field, value, match in (
        ("lpips_pooling", "mean", "method.lpips_pooling='mean' is invalid"),
        ("lpips_resize", 0, "method.lpips_resize=0 is invalid: .*at least 16"),
        ("lpips_resize", -1, "method.lpips_resize=-1 is invalid"),
    ):
        bad = tiny_config(method__name="cd", method__distance="lpips", method__lpips_resize=16)
        bad.method[field] = value
        with pytest.raises(ValueError, match=match):
            config_checks.check(bad, "summary")
    c.data.channels = 4
    with pytest.raises(ValueError, match="data.channels=4"):
        config_checks.check(c, "summary")


def _lpips_cd_config(nets, **overrides):
    fields = dict(
        method__name="cd",
        method__distance="lpips",
        method__lpips_resize=16,
        method__lpips_vgg_path=nets[2],
        method__lpips_lin_path=nets[3],
        training__compilation_cache_dir="",
    )
    return tiny_config(**(fields | overrides))


def _net(p, x, sigma, labels, train, rng):
    """A toy denoiser (test_cd.py's): one trainable scale."""
    return p["w"] * x * (1 + 0.1 * sigma[:, None, None, None])


def _teacher(p, x, sigma, labels, train, rng):
    return p["a"] * 0.25 / (sigma[:, None, None, None] ** 2 + 0.25) * x


@pytest.mark.slow  # compiles VGG16's backward pass: about 13 s
def test_cd_step_with_lpips(nets, weights):
    """One jitted CD step (a toy network, so that the step is VGG16's cost) on 16 x 16 RGB
    images: the frozen weights the config's files give stay bitwise equal after the step; the
    loss equals mean LPIPS(f(x_hi, t_hi), f(heun(x_hi), t_lo)) recomputed here; the step's
    program holds no copy of them as constants (its text is far smaller than their 58 MB)."""
    c = _lpips_cd_config(nets, method__lpips_resize=0, data__image_size=16, data__channels=3)
    c.training.batch_size = 4
    frozen = losses.frozen_weights(c)
    assert set(frozen) == {"lpips"}
    exp = experiment.Experiment(
        method=cd.METHOD,
        model=None,
        denoise=_net,
        loss_fn=cd.objective(c, Denoisers(_net, _net, _teacher)),
        tx=state.make_optimizer(c.optim),
        mesh=experiment.make_mesh(),
    )
    params = {"w": np.float32(1.3)}  # numpy: the step donates its device copy
    extra = {"teacher": {"a": np.float32(0.9)}, **frozen}
    start = jax.device_put(state.create(params, exp.tx, 1, extra=extra), exp.replicated)
    x = _images(10, (4, 16, 16, 3))
    batch = train.global_batch({"image": x, "label": np.zeros((4,), np.int32)}, exp)
    step_fn = train.make_train_step(exp, (0.9,), c.seed)
    assert len(step_fn.lower(start, batch).as_text()) < 10_000_000
    new, metrics = step_fn(start, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.extra["lpips"]), weights)
    assert float(new.params["w"]) != np.float32(1.3)

    rng = keys.indexed(c.seed, "train", 0)
    k_index, k_noise, _ = jax.random.split(rng, 3)
    sigmas = schedules.karras_sigmas(18, c.method.sigma_min, c.method.sigma_max, 7.0, 18)
    n = jax.random.randint(k_index, (4,), 0, 17)
    t_lo, t_hi = sigmas[n], sigmas[n + 1]
    x_hi = x + t_hi[:, None, None, None] * jax.random.normal(k_noise, x.shape)
    x_lo = cd.heun_step(_teacher, {"a": 0.9}, x_hi, t_hi, t_lo, None)
    student = _net(params, x_hi, t_hi, None, True, None)
    target = _net(params, x_lo, t_lo, None, True, None)
    expected = jnp.mean(lpips.lpips(weights, student, target, 0, "max"))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


def test_no_gradient_reaches_the_lpips_weights(nets, weights):
    """The distance CD gets (losses.get_distance with the config) reads its weights under
    stop_gradient: d loss / d weights is exactly zero while d loss / d image is not."""
    c = _lpips_cd_config(nets, method__lpips_resize=0)
    distance = losses.get_distance("lpips", c)
    a, b = _images(11, (2, 16, 16, 3)), _images(12, (2, 16, 16, 3))

    def loss(a, frozen):
        return jnp.sum(distance(a, b, None, frozen))

    grad_a, grad_w = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, {"lpips": weights})
    assert all(not np.any(g) for g in jax.tree.leaves(grad_w))
    assert np.any(np.asarray(grad_a))


@pytest.mark.slow
def test_restoring_needs_no_weight_files(nets, tmp_path):
    """A run's checkpoint holds the LPIPS weights: with the files gone, the abstract state
    (what resume, sample and eval restore into) is built without reading them and the
    restored weights are the files' bits; a new training start without them is refused with
    one sentence before anything is written."""
    c = _lpips_cd_config(nets)
    exp = experiment.build(c)
    start = experiment.init_state(exp, c)
    ckpt = Checkpointer(str(tmp_path / "run"), 1)
    ckpt.save(0, start)
    ckpt.close()
    gone = _lpips_cd_config(nets, method__lpips_vgg_path=str(tmp_path / "gone.pth"))
    abstract = experiment.abstract_state(experiment.build(gone), gone)
    restored = Checkpointer(str(tmp_path / "run"), 1, read_only=True).restore(abstract)
    jax.tree.map(np.testing.assert_array_equal, restored.extra["lpips"], start.extra["lpips"])

    with pytest.raises(FileNotFoundError, match="^No LPIPS weights file at method.lpips_vgg_"):
        train.train_and_evaluate(gone, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_cifar10_cd_is_cms_lpips_recipe_and_summary_needs_no_weights(tmp_path):
    c = cifar10_cd.get_config()
    m = c.method
    assert (m.distance, m.lpips_resize, m.lpips_pooling) == ("lpips", 224, "max")
    m.lpips_vgg_path = m.lpips_lin_path = str(tmp_path / "absent.pth")
    config_checks.check(c, "summary")
    c.method.init_from = "/teacher"
    config_checks.check(c, "train")  # the files are read when the run starts, not here
    table = modes.summary(c, "unused")
    assert table.splitlines()[-1].startswith("parameters:")


def test_a_new_run_resolves_reads_and_traces_once(nets, tmp_path, monkeypatch):
    """A new CD run with LPIPS from method.init_from: the run resolves its method entry once
    (experiment.build; the launcher's config checks resolve their own), reads the weight files
    once, and traces the network's initializer once (the shapes init_from is checked against
    are the ones it restores into)."""
    source = str(tmp_path / "edm")
    helpers.edm_source(source)
    c = _lpips_cd_config(nets, method__init_from=source)
    c.training.num_steps = 0
    calls = collections.Counter()

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(methods, "get", counting("get", methods.get))
    network = losses.NETWORK_DISTANCES["lpips"]
    counted = dataclasses.replace(network, load=counting("load", network.load))
    monkeypatch.setitem(losses.NETWORK_DISTANCES, "lpips", counted)
    monkeypatch.setattr(experiment, "init_params", counting("trace", experiment.init_params))
    train.train_and_evaluate(c, str(tmp_path / "run"))
    assert calls == {"get": 1, "load": 1, "trace": 1}
