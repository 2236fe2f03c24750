"""Tiny random models of every built-in architecture, shared by the tests."""
from __future__ import annotations

import os
import warnings

# Before torch loads OpenMP: on a shared 2-core machine, spin-waiting threads made the suite 20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(min(2, torch.get_num_threads()))
warnings.filterwarnings("ignore", message=".*bos_token_id.*|.*eos_token_id.*")


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()


def build(kind: str, square: bool = False, seed: int = 0):
    """A tiny random model; `square=True` makes d_mlp == d_model so orientation cannot follow from shape."""
    _quiet_transformers()
    import transformers as tf

    torch.manual_seed(seed)
    d, heads, layers = 24, 3, 2
    inner = d if square else 2 * d
    if kind == "dt":
        cfg = tf.DecisionTransformerConfig(state_dim=5, act_dim=3, hidden_size=d, n_layer=layers, n_head=heads,
                                           n_inner=inner, max_ep_len=40, n_positions=64)
        model = tf.DecisionTransformerModel(cfg)
    elif kind in ("gpt2", "gpt2-body"):
        cfg = tf.GPT2Config(vocab_size=50, n_positions=32, n_embd=d, n_layer=layers, n_head=heads, n_inner=inner)
        model = (tf.GPT2LMHeadModel if kind == "gpt2" else tf.GPT2Model)(cfg)
    elif kind in ("gptj", "gptj-body"):
        cfg = tf.GPTJConfig(vocab_size=50, n_positions=32, n_embd=d, n_layer=layers, n_head=heads, n_inner=inner,
                            rotary_dim=4)
        model = (tf.GPTJForCausalLM if kind == "gptj" else tf.GPTJModel)(cfg)
    else:
        raise ValueError(kind)
    # Random LayerNorm gains and biases, so folding and bias handling are actually exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


KINDS = ["dt", "gpt2", "gpt2-body", "gptj", "gptj-body"]
MODEL_PARAMS = [(k, sq) for k in KINDS for sq in (False, True)]


def example_inputs(model, batch: int = 2, seq: int = 5, seed: int = 1) -> dict:
    """Keyword inputs for one forward pass of a tiny model."""
    g = torch.Generator().manual_seed(seed)
    if type(model).__name__ == "DecisionTransformerModel":
        c = model.config
        return dict(states=torch.randn(batch, seq, c.state_dim, generator=g),
                    actions=torch.randn(batch, seq, c.act_dim, generator=g),
                    returns_to_go=torch.randn(batch, seq, 1, generator=g),
                    timesteps=torch.randint(0, c.max_ep_len, (batch, seq), generator=g),
                    attention_mask=torch.ones(batch, seq, dtype=torch.long))
    return dict(input_ids=torch.randint(0, model.config.vocab_size, (batch, seq), generator=g))


def outputs(model, inputs) -> list[torch.Tensor]:
    """Every tensor a forward pass returns, for bitwise comparisons."""
    with torch.no_grad():
        out = model(**inputs)
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(model, snap) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        # Compare bits, not values: -0.0 vs 0.0 or a NaN payload would be a real difference.
        assert torch.equal(_bits(now[k]), _bits(v)), f"{k} changed"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.dtype.is_floating_point else t


@pytest.fixture
def one_thread():
    """Small problems: a second BLAS thread only adds contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=MODEL_PARAMS, ids=[f"{k}{'-square' if s else ''}" for k, s in MODEL_PARAMS])
def any_model(request):
    kind, square = request.param
    return build(kind, square)


@pytest.fixture(scope="session")
def balancer_checkpoint(tmp_path_factory):
    """The hand-wired CartPole balancer (tests/experiments_models.py) saved as a checkpoint directory."""
    from tests.experiments_models import cartpole_dt

    model, md = cartpole_dt()
    directory = tmp_path_factory.mktemp("balancer")
    model.save_pretrained(directory)
    md.save(directory)
    return directory


@pytest.fixture(scope="module")
def balancer():
    """The hand-wired CartPole balancer, loaded with its metadata (one per test module: tests may patch it)."""
    import surgery
    from tests.experiments_models import cartpole_dt

    model, md = cartpole_dt()
    return surgery.load(model, metadata=md)
