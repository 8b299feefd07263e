"""Reinforcement learning for Hugging Face causal language models (``pip install -e ".[llm]"``).

A completion is an episode and a token is an action: GRPO/GSPO, RLOO and PPO on text use the same loss functions as
on gymnasium envs. A config with a ``model`` section trains a language model (:mod:`pgkit.llm.config`).
"""
