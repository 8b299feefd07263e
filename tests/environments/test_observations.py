"""Observation leaves, their processing (normalise vectors only, keep images uint8, shift discrete indices) and the
encoders (one-hot, CNN, per-key concatenation), checked by hand."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from pgkit.config import PolicyConfig
from pgkit.environments import ObservationNormalizer
from pgkit.environments.observations import ObservationLayout, StructuredObservations, make_observation_processor
from pgkit.networks.encoders import ImageEncoder, ObservationEncoder, OneHot, conv_output_size

IMAGE = gym.spaces.Box(0, 255, (12, 10, 3), np.uint8)
DICT = gym.spaces.Dict({
    "camera": IMAGE,
    "state": gym.spaces.Dict({"velocity": gym.spaces.Box(-1, 1, (2, 2), np.float32)}),
    "mode": gym.spaces.Discrete(3, start=-1),
    "flags": gym.spaces.MultiBinary(4),
})


def test_leaves_of_every_supported_space():
    layout = ObservationLayout.from_space(DICT)
    assert layout.structured
    kinds = {leaf.key: (leaf.kind, leaf.shape) for leaf in layout.leaves}
    # gymnasium sorts Dict keys
    assert kinds == {"camera": ("image", (12, 10, 3)), "flags": ("vector", (4,)), "mode": ("discrete", (1,)),
                     "state.velocity": ("vector", (4,))}
    mode = next(leaf for leaf in layout.leaves if leaf.key == "mode")
    assert mode.nvec == (3,) and mode.start == (-1,)
    assert not next(leaf for leaf in layout.leaves if leaf.key == "flags").normalize  # MultiBinary: 0/1 already
    tup = ObservationLayout.from_space(gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiDiscrete([3, 4]))))
    assert [(leaf.key, leaf.nvec) for leaf in tup.leaves] == [("0", (2,)), ("1", (3, 4))]
    assert ObservationLayout.from_space(gym.spaces.Box(-1, 1, (5,))).plain_vector
    assert not ObservationLayout.from_space(IMAGE).plain_vector
    with pytest.raises(ValueError, match="Text is not supported"):
        ObservationLayout.from_space(gym.spaces.Text(5))


def test_processing_normalises_vectors_only():
    processor = make_observation_processor(DICT, clip=10.0, enabled=True)
    assert isinstance(processor, StructuredObservations)
    rng = np.random.default_rng(0)
    obs = {
        "camera": rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8),
        "state": {"velocity": rng.normal(3.0, 2.0, (5, 2, 2)).astype(np.float32)},
        "mode": np.array([-1, 0, 1, 1, -1]),
        "flags": rng.integers(0, 2, (5, 4)).astype(np.int8),
    }
    processor.update(obs)
    out = processor(obs)
    assert isinstance(out, TensorDict) and out.batch_size == torch.Size([5])
    assert out["camera"].dtype == torch.uint8 and torch.equal(out["camera"], torch.from_numpy(obs["camera"]))
    assert out["mode"].tolist() == [[0], [1], [2], [2], [0]]  # start subtracted
    velocity = obs["state"]["velocity"].reshape(5, 4).astype(np.float64)
    expected = (velocity - velocity.mean(0)) / np.sqrt(velocity.var(0) + 1e-8)  # first batch dominates the prior
    torch.testing.assert_close(out["state.velocity"], torch.from_numpy(expected).float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out["flags"], torch.from_numpy(obs["flags"]).float())  # not normalised
    assert [len(s.mean) for s in processor.running_stats()] == [4]  # statistics for the Box vector alone


def test_plain_vectors_keep_the_normaliser_and_its_state_keys():
    processor = make_observation_processor(gym.spaces.Box(-1, 1, (3,)), clip=5.0, enabled=True)
    assert isinstance(processor, ObservationNormalizer)
    assert set(processor.state_dict()) == {"rms.mean", "rms.var", "rms.count"}
    # A Box of several dims is a flat vector of its entries.
    grid = make_observation_processor(gym.spaces.Box(-1, 1, (2, 3)), clip=5.0, enabled=False)
    obs = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    torch.testing.assert_close(grid(obs), torch.from_numpy(obs.reshape(2, 6)))


def test_one_hot_and_combined_encoder():
    one_hot = OneHot([2, 3])
    assert one_hot(torch.tensor([[1, 0], [0, 2]])).tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]]
    layout = ObservationLayout.from_space(DICT)
    encoder = ObservationEncoder(layout, "cnn", (4,), (3,), (2,), 7)
    assert encoder.out_dim == 7 + 4 + 3 + 4  # camera features, flags, mode one-hot, velocity
    obs = TensorDict({"camera": torch.zeros(2, 12, 10, 3, dtype=torch.uint8), "flags": torch.ones(2, 4),
                      "mode": torch.tensor([[2], [0]]), "state.velocity": torch.full((2, 4), 0.5)}, batch_size=[2])
    features = encoder(obs)
    assert features.shape == (2, 18)
    assert features[:, 7:11].tolist() == [[1.0] * 4] * 2
    assert features[:, 11:14].tolist() == [[0, 0, 1], [1, 0, 0]]
    assert features[:, 14:].tolist() == [[0.5] * 4] * 2


def test_cnn_scales_pixels_and_uses_nature_sizes():
    encoder = ImageEncoder((84, 84, 4), (32, 64, 64), (8, 4, 3), (4, 2, 1), 512, ortho_init=True)
    assert conv_output_size(84, 84, (8, 4, 3), (4, 2, 1)) == (7, 7)  # NatureCNN: 64 x 7 x 7 before the linear
    assert encoder.net[-2].in_features == 64 * 7 * 7
    image = torch.randint(0, 256, (2, 84, 84, 4), dtype=torch.uint8)
    with torch.no_grad():  # channel-last uint8 in; the convolutions see channel-first pixels in [0, 1]
        expected = encoder.net(image.permute(0, 3, 1, 2).double().div(255.0).float())
        torch.testing.assert_close(encoder(image), expected)
        assert encoder(image).shape == (2, 512)
        assert not torch.allclose(encoder(image), encoder.net(image.permute(0, 3, 1, 2).float()))
    with pytest.raises(ValueError, match="smaller than its kernel"):
        conv_output_size(10, 10, (8, 4, 3), (4, 2, 1))


def test_policy_builds_cnn_per_image_and_shares_it_by_default():
    space = gym.spaces.Dict({"camera": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
                             "speed": gym.spaces.Box(-1, 1, (1,), np.float32)})
    policy = PolicyConfig().init(space, gym.spaces.Discrete(2))
    assert isinstance(policy.encoder.parts["camera"], ImageEncoder)
    assert policy.critic_encoder is None  # SB3's share_features_extractor
    own = PolicyConfig(encoder={"share": False}).init(space, gym.spaces.Discrete(2))
    assert isinstance(own.critic_encoder.parts["camera"], ImageEncoder) and own.critic_encoder is not own.encoder
    assert set(map(id, own.critic_parameters())).isdisjoint(map(id, own.actor_parameters()))
    # Parameter-free encoders (vectors, one-hot) compute the same for both and are never doubled.
    discrete = gym.spaces.Dict({"a": gym.spaces.Discrete(3), "b": gym.spaces.Box(-1, 1, (2,), np.float32)})
    assert PolicyConfig(encoder={"share": False}).init(discrete, gym.spaces.Discrete(2)).critic_encoder is None
    processor = make_observation_processor(space, 10.0, True)
    obs = {"camera": np.zeros((3, 36, 36, 3), np.uint8), "speed": np.ones((3, 1), np.float32)}
    dist, value = policy(processor(obs))
    assert dist.sample().shape == (3,) and value.shape == (3,)


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("recurrent", [None, {"hidden_size": 8}, {"hidden_size": 8, "shared": True}])
def test_value_is_the_same_on_every_path(shared_trunk, share, recurrent):
    """forward(), value() and the acting step() compute the critic through the same parts, whatever is shared."""
    if recurrent and recurrent.get("shared") and not share:
        return  # refused by the config (a shared core reads one encoder)
    space = gym.spaces.Dict({"camera": gym.spaces.Box(0, 255, (9, 9, 3), np.uint8),
                             "speed": gym.spaces.Box(-1, 1, (2,), np.float32)})
    cfg = PolicyConfig(shared_trunk=shared_trunk, recurrent=recurrent,
                       encoder={"share": share, "cnn_channels": [4], "cnn_kernels": [3], "cnn_strides": [2],
                                "cnn_features": 8})
    torch.manual_seed(0)
    policy = cfg.init(space, gym.spaces.Discrete(2))
    processor = make_observation_processor(space, 10.0, False)
    rng = np.random.default_rng(0)
    obs = processor({"camera": rng.integers(0, 256, (5, 9, 9, 3), dtype=np.uint8),
                     "speed": rng.normal(size=(5, 2)).astype(np.float32)})
    state = torch.randn(5, policy.state_size)
    sequences = None
    if recurrent:
        from pgkit.networks.recurrent import Sequences

        sequences = Sequences(torch.ones(5, dtype=torch.bool), state)  # five sequences of one step
    with torch.no_grad():
        dist, value = policy(obs, sequences)
        torch.testing.assert_close(policy.value(obs, sequences), value)
        torch.testing.assert_close(policy.distribution(obs, sequences).log_p, dist.log_p)
        step_dist, step_value, _ = policy.step(obs, state if recurrent else policy.initial_state(5))
        torch.testing.assert_close(step_value, value)
        torch.testing.assert_close(step_dist.log_p, dist.log_p)
    if not share and not shared_trunk:  # the critic's own CNN is used
        (policy(obs, sequences)[1].sum()).backward()
        assert policy.critic_encoder.parts["camera"].net[0].weight.grad.abs().sum() > 0


def test_channel_first_frame_stacks_and_multibinary():
    stack = gym.spaces.Box(0, 255, (4, 16, 16), np.uint8)
    (leaf,) = ObservationLayout.from_space(stack).leaves
    assert leaf.channels_first and leaf.image_size == (16, 16, 4)
    encoder = ImageEncoder(leaf.shape, (8,), (3,), (2,), 10, True, channels_first=True)
    image = torch.randint(0, 256, (2, 4, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(encoder(image), encoder.net(image.float() / 255.0))
    PolicyConfig(encoder={"cnn_kernels": [3], "cnn_strides": [2], "cnn_channels": [8]}).check_observation_space(stack)
    flags = make_observation_processor(gym.spaces.MultiBinary(3), clip=10.0, enabled=True)
    assert flags.running_stats() == []  # 0/1 flags are never normalised
    torch.testing.assert_close(flags(np.array([[1, 0, 1]], np.int8)), torch.tensor([[1.0, 0.0, 1.0]]))


@pytest.mark.parametrize(
    ("obs_space", "act_space", "recurrent"),
    [
        (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (3,)), None),
        (gym.spaces.Dict({"img": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), "v": gym.spaces.Box(-1, 1, (4,))}),
         gym.spaces.Discrete(4), {"kind": "lstm", "hidden_size": 8}),
    ],
)
def test_ortho_init_false_means_pytorch_default_init_everywhere(obs_space, act_space, recurrent):
    # SB3's ortho_init=False: every layer keeps PyTorch's init, whose weights and biases are uniform in
    # +-1/sqrt(fan_in) (Linear, Conv) or +-1/sqrt(hidden) (LSTM). Orthogonal init zeroes biases, and puts head
    # weights at the 0.01 scale, so both checks fail on it.
    def layers(ortho: bool):
        torch.manual_seed(0)
        policy = PolicyConfig(ortho_init=ortho, recurrent=recurrent).init(obs_space, act_space)
        return [m for m in policy.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.LSTM)]

    default = layers(False)
    assert len(default) >= 5
    for module in default:
        for name, param in module.named_parameters():
            if isinstance(module, torch.nn.LSTM):
                bound = 1 / module.hidden_size**0.5
            else:
                bound = 1 / module.weight[0].numel() ** 0.5  # fan_in
            assert param.abs().max() <= bound + 1e-6, (module, name)
            assert param.abs().max() > 0.3 * bound, (module, name)  # not a zero or 0.01-scaled init
    ortho = layers(True)
    assert all(torch.count_nonzero(m.bias) == 0 for m in ortho if not isinstance(m, torch.nn.LSTM))
