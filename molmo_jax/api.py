"""User API: load a checkpoint directory once, then ask questions about images.

    bundle = molmo_jax.load("Molmo-7B-D-0924/")            # native, HF release, Orbax export or training run
    bundle.generate("cat.jpg", "Describe this image.")     # -> str
    pred = bundle.predict("cat.jpg", "Point to the cat.")  # -> Prediction(text, points in pixels)
    bundle.generate_batch(["a.jpg", None], ["Point to the dog.", "What is 2 + 2?"])
    molmo_jax.save(bundle, "export/", "orbax")             # or "native" / "hf_release"

A checkpoint directory holds config.json, the weights and the tokenizer (formats: `molmo_jax.io`).
`save` writes all of them, so its output loads with `load`.

Inference pads each batch to every crop of the config and the prompt to a multiple of 64 tokens, so one
compiled program serves most prompts. Images whose aspect ratio the official preprocessor cannot fit
(the short side would resize to 0 pixels) are letterboxed with black first; points are mapped back to
the original pixels either way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np

from molmo_jax import config as config_lib
from molmo_jax import decoding, io, points
from molmo_jax.decoding import Sampling
from molmo_jax.preprocess import ImageInput, Preprocessor, SequenceLengthError, collate
from molmo_jax.tokenizer import MolmoTokenizer

DEFAULT_MAX_NEW_TOKENS = 65  # when the config has no default_inference_len (the official default)

PointMapper = Callable[[str], np.ndarray]  # answer text -> float64[n, 2] pixel points of the original image


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One answer: the generated text and its points as float64[n, 2] (x, y) pixels of the original image."""
    text: str
    points: np.ndarray


def letterbox(image: np.ndarray, max_aspect: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Pads the short side of uint8[H, W, 3] with black, centred, until long / short <= max_aspect.

    Returns (image, (left, top) offset of the original in it); images within the ratio come back as is.
    """
    h, w = image.shape[:2]
    need_h, need_w = max(h, int(np.ceil(w / max_aspect))), max(w, int(np.ceil(h / max_aspect)))
    if (need_h, need_w) == (h, w):
        return image, (0, 0)
    top, left = (need_h - h) // 2, (need_w - w) // 2
    out = np.zeros((need_h, need_w, 3), np.uint8)
    out[top:top + h, left:left + w] = image
    return out, (left, top)


def _truncate(text: str, stop_strings: Iterable[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cuts = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


@dataclasses.dataclass
class MolmoBundle:
    """A loaded model with what it needs to answer: config, params (sharded on `mesh`), tokenizer,
    preprocessor. Build it with `load`."""
    cfg: Any
    params: Any
    tokenizer: MolmoTokenizer
    preprocessor: Preprocessor
    mesh: Any = None
    # (params, cfg) -> (frozen cfg, `decoding.generation_params`), prepared once, not per call
    _prepared: tuple = dataclasses.field(default=(None, None, None, None), init=False, repr=False, compare=False)

    def sampling(self, sampling: Sampling | None = None, **overrides) -> Sampling:
        """`sampling` (default: greedy, the config's `default_inference_len` tokens) with the non-None
        `overrides` (Sampling fields) applied and EOS added to its stop ids."""
        sampling = sampling or Sampling(max_new_tokens=self.cfg.formatting.default_inference_len or
                                        DEFAULT_MAX_NEW_TOKENS)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        stop_ids = tuple(dict.fromkeys(overrides.pop("stop_ids", sampling.stop_ids) + (self.tokenizer.eos_id,)))
        return dataclasses.replace(sampling, stop_ids=stop_ids, **overrides)

    def _encode(self, image: ImageInput | None, prompt: str) -> tuple[dict[str, np.ndarray], PointMapper]:
        """Model inputs of one example and a function mapping its answer text to original pixels."""
        if image is None:
            return self.preprocessor(None, prompt), lambda text: np.zeros((0, 2))
        pixels = self.preprocessor.load(image)
        view, offset = letterbox(pixels, max_aspect=min(self.cfg.vit.image_size) / 2)
        size = (view.shape[1], view.shape[0])
        return self.preprocessor(view, prompt), lambda text: points.pixel_points(text, size, offset)

    def predict_batch(self, images: Sequence[ImageInput | None], prompts: Sequence[str],
                      sampling: Sampling | None = None, max_new_tokens: int | None = None,
                      stop_strings: Sequence[str] = (), seed: int = 0) -> list[Prediction]:
        """Answers prompts[i] about images[i] (None: text only) in one batch.

        Generation stops at EOS (and `sampling.stop_ids`); the text is cut before the first stop string.
        Raises ImageError for an unusable image, SequenceLengthError when a prompt (image tokens
        included) plus max_new_tokens exceeds the model's max_sequence_length.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        sampling = self.sampling(sampling, max_new_tokens=max_new_tokens)
        encoded = [self._encode(image, prompt) for image, prompt in zip(images, prompts)]
        examples = [ex for ex, _ in encoded]
        self._check_length(examples, sampling.max_new_tokens)
        with_images = any("images" in ex for ex in examples)
        batch = collate(examples, max_crops=config_lib.max_total_crops(self.cfg) if with_images else None)
        tokens = decoding.generate(*self._generation_args(), batch, sampling, seed, self.mesh)
        texts = [_truncate(self.tokenizer.decode(ids), stop_strings)
                 for ids in decoding.trim(tokens, sampling.stop_ids)]
        return [Prediction(text, to_pixels(text)) for text, (_, to_pixels) in zip(texts, encoded)]

    def _generation_args(self) -> tuple:
        """(frozen cfg, generation params) for `decoding.generate`, made again only when `cfg` or `params`
        is replaced (the config is frozen when first used: edit a bundle's config by assigning a new one)."""
        params, cfg = self._prepared[:2]
        if params is not self.params or cfg is not self.cfg:
            self._prepared = (self.params, self.cfg, ml_collections.FrozenConfigDict(self.cfg),
                              decoding.generation_params(self.params))
        return self._prepared[2:]

    def _check_length(self, examples: Sequence[Mapping[str, np.ndarray]], max_new_tokens: int):
        budget = self.cfg.llm.max_sequence_length
        longest = max(len(ex["input_tokens"]) for ex in examples)
        if longest + max_new_tokens > budget:
            raise SequenceLengthError(
                f"prompt of {longest} tokens (image tokens included) + max_new_tokens={max_new_tokens} exceeds "
                f"the model's max_sequence_length={budget}; shorten the prompt or generate fewer tokens")

    def predict(self, image: ImageInput | None, prompt: str, **kwargs) -> Prediction:
        """One prompt about one image (or None); keyword arguments as `predict_batch`."""
        return self.predict_batch([image], [prompt], **kwargs)[0]

    def generate_batch(self, images: Sequence[ImageInput | None], prompts: Sequence[str], **kwargs) -> list[str]:
        """The answer texts of `predict_batch`."""
        return [p.text for p in self.predict_batch(images, prompts, **kwargs)]

    def generate(self, image: ImageInput | None, prompt: str, **kwargs) -> str:
        """The answer text of `predict`."""
        return self.predict(image, prompt, **kwargs).text


def generate(bundle: MolmoBundle, image: ImageInput | None, prompt: str, **kwargs) -> str:
    """`molmo_jax.generate(molmo_jax.load(dir), "cat.jpg", "Point to the cat.")`: the answer text."""
    return bundle.generate(image, prompt, **kwargs)


# ----------------------------------------------------------------------------- loading and saving

def load(path: str | os.PathLike, mesh=None, vision: Mapping[str, Any] | None = None,
         progress: bool = False) -> MolmoBundle:
    """Loads a checkpoint directory (any `io.FORMATS`: native, HF release, Orbax export, training run)
    -> MolmoBundle.

    The config and tokenizer are checked before any weight is read. Raises CheckpointError (not a
    checkpoint, files missing, weights that contradict the config), TokenizerError or ConfigError
    naming the problem.
    """
    cfg = io.load_config(path, vision)
    tokenizer = io.load_tokenizer(path, cfg)
    params = io.load_params(path, cfg, mesh, progress)
    return MolmoBundle(cfg, params, tokenizer, Preprocessor(cfg, tokenizer), mesh)


def save(bundle: MolmoBundle, path: str | os.PathLike, fmt: str):
    """Writes the bundle's model (config, weights, tokenizer) to the new or empty directory `path` in `fmt`
    (one of `io.EXPORT_FORMATS`)."""
    io.save(bundle.params, bundle.cfg, bundle.tokenizer, path, fmt)
