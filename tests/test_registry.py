"""The random-init control: the same architecture untrained, its weights fixed by the seed alone."""

import pytest
import torch

import speechssl
from speechssl.checkpoint import save_upstream
from speechssl.errors import CheckpointError, ConfigError
from speechssl.feature_cache import upstream_fingerprint
from speechssl.registry import get_entry, list_upstreams, random_upstream

def has_weights(name):
    return next(speechssl.build_upstream(name, **get_entry(name).tiny).parameters(), None) is not None


TRAINED = [name for name in list_upstreams() if has_weights(name)]
FRONT_ENDS = [name for name in list_upstreams() if not has_weights(name)]  # fbank, mfcc, mel


def fingerprint(model):
    return upstream_fingerprint(model, torch.float32)


@pytest.mark.parametrize("name", TRAINED)
def test_the_seed_alone_fixes_the_weights(name):
    tiny = get_entry(name).tiny
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = random_upstream(name, seed=0, **tiny)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone
    torch.rand(5)  # whatever ran before must not matter
    again = random_upstream(name, seed=0, **tiny)
    other = random_upstream(name, seed=1, **tiny)
    assert fingerprint(first) == fingerprint(again) != fingerprint(other)
    assert not first.training


def test_a_checkpoint_gives_its_config_not_its_weights(tmp_path):
    tiny = {**get_entry("apc").tiny, "num_layers": 2}
    trained = speechssl.build_upstream("apc", **tiny)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # weights no initialisation would draw
    save_upstream(trained, tmp_path / "ckpt")
    control = random_upstream("apc", seed=0, ckpt=tmp_path / "ckpt")
    assert control.config == trained.config  # the checkpoint's config (num_layers=2), not APCConfig's defaults
    assert fingerprint(control) == fingerprint(random_upstream("apc", seed=0, **tiny))
    assert fingerprint(control) != fingerprint(speechssl.load_upstream("apc", ckpt=tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="holds a 'apc' upstream, not 'tera'"):
        random_upstream("tera", seed=0, ckpt=tmp_path / "ckpt")


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_a_front_end_without_weights_has_no_control(name):
    with pytest.raises(ConfigError, match=rf"init=random: upstream '{name}' has no weights .*init=pretrained"):
        random_upstream(name, seed=0)
