"""The app's named endpoints, apart from the page: each takes its arguments as the
caller sent them (the page's events run with preprocess=False), checks them, and says
what is wrong with a photo.UserError; app.py turns that into the caller's message."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import torch

from calibration import PairThreshold, fit_pair, logits_and_features, ood_score
from cnn_model import CNN
from common import photo
from data import to_normalized
from rollout import HEAD_FUSIONS, gradient_rollout, model_rollout, scale_to_unit
from space import limits, own_classes
from space.arguments import one_of, payload_key, photo_source, whole_number
from space.comparison import comparison_markdown, predicted_classes
from space.mistakes import (
    ANY,
    Mistakes,
    find_cnn_mistakes,
    find_mistakes,
    load_sample,
    picture,
    sample_caveat,
    select,
)
from space.model_source import Loaded
from space.pictures import augmented_views, block_maps, enlarge, patch_views, rollout_figure
from space.verdict import Answer, NotANumberError, Together, answer, together, verdict_markdown
from vit_model import tta_logits

TOP_CLASS = "its top class"  # /class_map explains the model's own answer
RECENT_ANSWERS = 16  # shown pictures whose answers are kept, a few per concurrent request
MISTAKES_SHOWN = 24  # the most confident mistakes of a filter, in one screen or two


class Answers(NamedTuple):
    """Both models' answers for one shown picture, and their joint call where fitted."""

    vit: Answer
    cnn: Answer | None
    both: Together | None


class Endpoints:
    """The app's named endpoints for one loaded model (or none), writing their pictures
    into `out` (gradio's cache folder, where they expire with DELETE_CACHE); `cnn_training`
    is the CNN's training.json, which says whether it held out the bundled sample."""

    def __init__(self, loaded: Loaded, out: Path, cnn: CNN | None = None, cnn_training: dict | None = None):
        self.model, self.out, self.cnn = loaded.model, out, cnn
        self.size = self.model.image_size if self.model is not None else 32
        # Without a model any statistics show the augmentation exactly as training does it
        # (normalizing then de-normalizing cancels out).
        self.mean, self.std = (self.model.mean, self.model.std) if self.model else ([0.5] * 3,) * 2
        self.heads = self.model.blocks[0].attn.num_heads if self.model is not None else 0
        self.patch_sizes = [p for p in range(1, self.size + 1) if self.size % p == 0]
        self.last_view = limits.LastCall()
        self.sample, self.no_sample = None, "No trained model is loaded."
        if self.model is not None:
            try:
                self.sample = load_sample()
                if self.sample.class_names != self.model.class_names:
                    self.sample = None
                    raise ValueError("the bundled sample's classes are not this model's")
            except ValueError as err:
                self.no_sample = f"The bundled validation sample cannot be used: {err}."
        self.caveat = sample_caveat(loaded.training)
        # Both models' scores are judged together only where both held out the sample that
        # fixes their joint threshold.
        self.pairs = (
            cnn is not None
            and self.sample is not None
            and cnn.class_names == self.model.class_names
            and not self.caveat
            and not sample_caveat(cnn_training or {})
        )
        self._pair: PairThreshold | None = None
        self._pair_lock = threading.Lock()
        self._mistakes, self._mistakes_lock, self._comparison = None, threading.Lock(), None
        self._cnn_mistakes: Mistakes | None = None
        self._recent_answers: OrderedDict[tuple[str, bool], Answers] = OrderedDict()
        self._answers_lock = threading.Lock()
        self._galleries: dict[tuple[str, str, str], tuple[list[tuple[str, str]], str]] = {}

    @property
    def mistakes(self) -> Mistakes | None:
        """The model's mistakes on the bundled sample, found on first use (seconds)."""
        with self._mistakes_lock:
            if self._mistakes is None and self.sample is not None:
                self._mistakes = find_mistakes(self.model, self.sample)
                limits.release_memory()  # the attention maps of 500 images are freed
        return self._mistakes

    @property
    def pair(self) -> PairThreshold | None:
        """The two models' joint threshold, fitted on first use on the bundled validation
        sample (a second); None where self.pairs is false."""
        with self._pair_lock:
            if self._pair is None and self.pairs:
                self._pair = fit_pair(
                    *(
                        ood_score(logits_and_features(m, self.sample.images)[0], "energy", m.temperature)
                        for m in (self.model, self.cnn)
                    )
                )
        return self._pair

    def comparison(self) -> str:
        """/comparison: the ViT and the CNN on the bundled sample, side by side."""
        self._require()
        if self.sample is None:
            raise photo.UserError(self.no_sample)
        if self.cnn is None:
            return "No CNN is loaded beside the ViT, so there is nothing to compare."
        if self._comparison is None:
            found = self.mistakes  # the ViT's answers, found once for the page
            vit = found.probs.argmax(1)
            cnn = predicted_classes(self.cnn, found.sample.images)
            self._comparison = comparison_markdown(vit, cnn, found.sample.labels, found.sample.class_names) + (
                f"\n\nThe sample: {found.sample.description}.{self.caveat}"
            )
        return self._comparison

    def find_mistakes_now(self) -> None:
        """Find the mistakes in a background thread, so that no request waits seconds
        for them (one that comes sooner waits for this one, not for its own)."""
        threading.Thread(target=lambda: (self.pair, self.mistakes), name="find-mistakes", daemon=True).start()

    def _png(self, pixels) -> str:
        return limits.save_png(pixels, self.out)

    def _require(self):
        if self.model is None:
            raise photo.UserError(
                "No trained model is loaded, so there is nothing to predict "
                "with: see the note at the top of the page for how to add weights."
            )
        return self.model

    def read(self, image: str | os.PathLike | dict | None) -> torch.Tensor:
        """The uint8 (3, size, size) input the model reads for an image argument."""
        try:
            return photo.load_photo(photo_source(image), self.size)
        finally:
            limits.release_memory()  # a large decode's freed pages go back to the system

    def _answer(self, model: torch.nn.Module, small: torch.Tensor, flip_tta: bool) -> Answer:
        """A model's calibrated answer for a uint8 image; with flip_tta, from the mean of
        the logits of the image and its mirror image (as training.json's val_acc_flip_tta)."""
        x = to_normalized(small[None], model.mean, model.std)
        with torch.no_grad():
            try:  # never serve NaN; the model passed its checks
                return answer(model, tta_logits(model, x, flip_tta))
            except NotANumberError as err:
                raise photo.UserError(f"{str(err).capitalize()}.") from None

    def _answers(self, image, flip_tta) -> Answers:
        model = self._require()
        if not isinstance(flip_tta, bool):
            raise photo.UserError(f"Flip TTA must be true or false, not {flip_tta!r}.")
        # /predict, /compare and /classify all follow one shown picture: the models run once
        # for it, and the two later calls reuse their answers.
        photo_source(image)  # a payload that names a file outside the uploads is refused first
        key = (payload_key(image), flip_tta)
        with self._answers_lock:
            found = self._recent_answers.get(key)
        if found is None:
            small = self.read(image)
            vit, cnn = self._answer(model, small, flip_tta), self.cnn and self._answer(self.cnn, small, flip_tta)
            found = Answers(vit, cnn, together(self.pair, vit, cnn) if self.pair else None)
            with self._answers_lock:
                self._recent_answers[key] = found
                while len(self._recent_answers) > RECENT_ANSWERS:
                    self._recent_answers.popitem(last=False)
        return found

    def view(self, image: str | os.PathLike | dict | None, request: gr.Request = None) -> str:
        """/view: the image as the model reads it, a PNG of the model's input size."""
        if image is None:  # a cleared upload: nothing to show, and no message on the page
            raise gr.Error(photo.NO_IMAGE, visible=False, print_exception=False)
        outcome, fresh = self.last_view.run(
            getattr(request, "session_hash", None),
            payload_key(image),
            lambda: self._png(self.read(image).permute(1, 2, 0).numpy()),
        )
        if outcome.exception() is not None and not fresh:  # already shown for this image
            raise gr.Error(str(outcome.exception()), visible=False, print_exception=False)
        path = outcome.result()
        return path if os.path.exists(path) else self._png(self.read(image).permute(1, 2, 0).numpy())

    def predict(self, image: str | os.PathLike | dict | None, flip_tta: bool = False) -> dict[str, float]:
        """/predict: the ViT's calibrated class probabilities for an image; with flip_tta,
        from the mean of the logits of the image and its mirror image."""
        return self._answers(image, flip_tta).vit.confidences

    def classify(self, image: str | os.PathLike | dict | None, flip_tta: bool = False) -> dict:
        """/classify: {"vit": ..., "cnn": ...} (the CNN's when one is loaded), each with
        its label, calibrated confidences, whether the image looks like one of its
        classes ("known", null where its config fixes no threshold) and its score; and
        "both" ({"known", "score"}: the two scores together, what the page says) where the
        two models' joint threshold is fitted."""
        found = self._answers(image, flip_tta)
        return {
            "vit": found.vit.as_json(),
            **({"cnn": found.cnn.as_json()} if found.cnn else {}),
            **({"both": found.both.as_json()} if found.both else {}),
        }

    def compare(
        self, image: str | os.PathLike | dict | None, flip_tta: bool = False
    ) -> tuple[str, dict[str, float] | None]:
        """/compare: both models' answers in words, and the CNN's top classes."""
        found = self._answers(image, flip_tta)
        return verdict_markdown(*found), found.cnn.confidences if found.cnn else None

    def rollout(
        self, image: str | os.PathLike | dict | None, head_fusion: str, discard_ratio: float, block_head: str
    ) -> tuple[str, list[tuple[str, str]], str]:
        """/rollout: the image beside its attention rollout (with the colour scale), each
        block's raw attention for one head or the heads fused, and a caption."""
        model = self._require()
        one_of(head_fusion, "Head fusion", HEAD_FUSIONS)
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise photo.UserError(f"The discard ratio must be at least 0 and below 1, not {discard_ratio!r}.")
        heads = [f"head {h + 1}" for h in range(self.heads)]
        head = one_of(block_head, "Block head", list(HEAD_FUSIONS) + heads)
        head = heads.index(head) if head in heads else head
        small = self.read(image)
        logits, maps, attentions = model_rollout(
            model, to_normalized(small[None], model.mean, model.std), head_fusion, discard_ratio
        )
        best = model.class_names[int(logits.argmax())]
        # The class, not its probability: the top 5 may read the mirror image too (flip
        # TTA), and one class must not show two probabilities on one page.
        caption = (
            f"Explaining **{best}**, the ViT's top class for the image alone. Left: the "
            f"{self.size}x{self.size} input; right: attention rollout over it. Colour "
            "scale (under the rollout): clear = little of the class token's attention, "
            "bright yellow = the most in this image."
        )
        blocks = [(self._png(p), c) for p, c in block_maps(small, attentions, head)]
        return self._png(rollout_figure(small, scale_to_unit(maps)[0])), blocks, caption

    def class_map(self, image: str | os.PathLike | dict | None, class_name: str) -> tuple[str, str]:
        """/class_map: the image beside the ViT's gradient-weighted rollout for one class
        (TOP_CLASS: its own answer), and a caption."""
        model = self._require()
        choice = one_of(class_name, "The class", [TOP_CLASS, *model.class_names])
        small = self.read(image)
        index = None if choice == TOP_CLASS else model.class_names.index(choice)
        maps, chosen = gradient_rollout(model, to_normalized(small[None], model.mean, model.std), index)
        whose = "the ViT's top class" if index is None else "the class you picked"
        caption = (
            f"Why **{model.class_names[chosen]}** ({whose})? The patches whose attention raises "
            "that class's score, through every block (gradient-weighted attention rollout); "
            "clear = no push towards the class. Of the maps a deletion test measured, it ranks "
            "best the patches the ViT relies on."
        )
        return self._png(rollout_figure(small, scale_to_unit(maps)[0])), caption

    def _own_model(self, name: str) -> torch.nn.Module:
        """The served model whose features a visitor's classifier reads (one of own_classes.MODELS)."""
        vit = self._require()
        if one_of(name, "The model", own_classes.MODELS) == "ViT":
            return vit
        if self.cnn is None:
            raise photo.UserError("No CNN is loaded beside the ViT: train your classifier on the ViT's features.")
        return self.cnn

    def train_own(
        self, names_text: str | None, model_name: str, *uploads: list | None
    ) -> tuple[own_classes.OwnClassifier, str]:
        """The visitor's classifier (for their page's state alone) from their class names,
        the model whose features it reads and one list of photos per class, and what the
        page says about it."""
        model = self._own_model(model_name)
        names = own_classes.class_names(names_text)
        groups = [list(u or []) for u in uploads[: len(names)]]
        own_classes.check_counts(names, [len(g) for g in groups])  # before decoding any photo
        classifier = own_classes.fit(model, names, [torch.stack([self.read(p) for p in g]) for g in groups])
        return classifier, (
            f"Trained on the {model_name}'s features of {classifier.photos} photos in {len(names)} classes: "
            f"it answers {100 * classifier.train_accuracy:.0f}% of them right (the photos it learnt from, "
            "so not a measure of new ones). Every photo you send from now on is also answered "
            "by your classifier, here, with its map; it lives in this page only and is gone when you close it."
        )

    def own_answer(
        self, image: str | os.PathLike | dict | None, classifier: own_classes.OwnClassifier | None
    ) -> dict[str, float] | None:
        """/own: the visitor's classifier on an image (None before they trained one)."""
        if classifier is None or image is None:
            return None
        return own_classes.answer(self._own_model(classifier.model), classifier, self.read(image))

    def own_map(
        self, image: str | os.PathLike | dict | None, classifier: own_classes.OwnClassifier | None
    ) -> tuple[str | None, str]:
        """/own_map: the image beside the map of the visitor's classifier for its top class,
        and a caption; (None, "") before they trained one."""
        if classifier is None or image is None:
            return None, ""
        small = self.read(image)
        heat, best = own_classes.explain(self._own_model(classifier.model), classifier, small)
        if classifier.model == "CNN":
            how = (
                "where the CNN's last features vote for it through your classifier (class activation "
                "map: the cells' votes, averaged, plus your classifier's bias are exactly its score)"
            )
        else:
            how = "the patches whose attention raises your classifier's score for it (gradient-weighted rollout)"
        caption = f"Why **{classifier.class_names[best]}**, your classifier's top class? Bright: {how}."
        return self._png(rollout_figure(small, heat)), caption

    def cam(self, image: str | os.PathLike | dict | None) -> tuple[str | None, str]:
        """/cam: the image beside the CNN's class activation map for its top class, and a
        caption; (None, why) without a CNN."""
        return self.cnn_class_map(image, TOP_CLASS)

    def cnn_class_map(self, image: str | os.PathLike | dict | None, class_name: str) -> tuple[str | None, str]:
        """/cnn_class_map: the image beside the CNN's class activation map for one class
        (TOP_CLASS: its own answer), and a caption; (None, why) without a CNN."""
        self._require()
        if self.cnn is None:
            return None, "No CNN is loaded beside the ViT, so there is no class activation map."
        choice = one_of(class_name, "The CNN's class", [TOP_CLASS, *self.cnn.class_names])
        small = self.read(image)
        x = to_normalized(small[None], self.cnn.mean, self.cnn.std)
        with torch.no_grad():
            index = int(self.cnn(x).argmax()) if choice == TOP_CLASS else self.cnn.class_names.index(choice)
            votes = self.cnn.cam(x, index)[0].clamp(min=0)  # where the features vote for the class
        heat = votes / votes.max() if votes.max() > 0 else votes
        rows, cols = votes.shape
        whose = "the CNN's top class" if choice == TOP_CLASS else "the class you picked for the CNN"
        caption = (
            f"Explaining **{self.cnn.class_names[index]}**, {whose}: where its last "
            f"features vote for it (class activation map, Zhou et al. 2016). The {rows}x{cols} "
            "cells' votes, averaged, plus one bias are exactly the class's logit; cells voting "
            "against it stay clear." + ("" if votes.max() > 0 else " Here no cell votes for it.")
        )
        return self._png(rollout_figure(small, heat)), caption

    def augment(
        self, image: str | os.PathLike | dict | None, count: int | float, seed: int | float | None
    ) -> list[tuple[str, str]]:
        """/augment: the image as the model reads it, then `count` augmented versions."""
        if seed is None:
            raise photo.UserError("Enter a seed: any whole number from 0 up gives repeatable draws.")
        count = whole_number(count, "The number of augmented versions", 1, 32)
        seed = whole_number(seed, "The seed", 0, 2**32 - 1)
        small = self.read(image)
        views = augmented_views(small, count, seed, self.mean, self.std)
        return [(self._png(enlarge(small, 128)), f"input, {self.size}x{self.size}")] + [
            (self._png(enlarge(v, 128)), f"augmented {i + 1}") for i, v in enumerate(views)
        ]

    def patches(self, image: str | os.PathLike | dict | None, patch_size: int | float | str) -> tuple[str, str, str]:
        """/patches: the grid of patches, the token sequence, and a caption. The patch size
        may come as text ("8"): Gradio's API description lists the choices that way."""
        if isinstance(patch_size, str) and patch_size.strip().isdigit():
            patch_size = int(patch_size)
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, float)):
            raise photo.UserError(
                f"The patch size must be a number, one of {', '.join(map(str, self.patch_sizes))}, not {patch_size!r}."
            )
        if patch_size not in self.patch_sizes:
            raise photo.UserError(
                f"Patch size {patch_size} does not divide {self.size}; use one "
                f"of {', '.join(map(str, self.patch_sizes))}."
            )
        grid, sequence, caption = patch_views(self.read(image), int(patch_size))
        return self._png(grid), self._png(sequence), caption

    def mistakes_for(self, true_class: str, predicted_class: str) -> tuple[list[tuple[str, str]], str]:
        """/mistakes: bundled validation images the ViT gets wrong, filtered by true and
        predicted class ("any" for all), most confident first, each with its top 3 and
        its rollout; and a summary."""
        return self._mistakes_of("ViT", true_class, predicted_class)

    def cnn_mistakes_for(self, true_class: str, predicted_class: str) -> tuple[list[tuple[str, str]], str]:
        """/cnn_mistakes: the same for the CNN, each with its class activation map."""
        if self.cnn is None:
            raise photo.UserError("No CNN is loaded beside the ViT, so it has no mistakes to show.")
        return self._mistakes_of("CNN", true_class, predicted_class)

    def _mistakes_of(self, model: str, true_class: str, predicted_class: str) -> tuple[list[tuple[str, str]], str]:
        self._require()
        if self.sample is None:
            raise photo.UserError(self.no_sample)
        names = [ANY] + self.sample.class_names
        key = (
            model,
            one_of(true_class, "The true class", names),
            one_of(predicted_class, "The predicted class", names),
        )
        # Each filter's answer is drawn once; its pictures are served again while they
        # last (limits.renew), and drawn anew once the cache has deleted one.
        answer = self._galleries.get(key)
        if answer is None or not all(limits.renew(path) for path, _ in answer[0]):
            answer = self._galleries[key] = self._draw_mistakes(*key)
        return answer

    def _found(self, model: str) -> Mistakes:
        if model == "ViT":
            return self.mistakes
        with self._mistakes_lock:
            if self._cnn_mistakes is None:
                self._cnn_mistakes = find_cnn_mistakes(self.cnn, self.sample)
        return self._cnn_mistakes

    def _draw_mistakes(self, model: str, true_class: str, predicted_class: str):
        found = self._found(model)
        chosen = select(found, true_class, predicted_class)
        total, wrong = len(found.sample.labels), len(found.wrong)
        shown_map = "its rollout" if model == "ViT" else "its class activation map"
        summary = (
            f"The {model} gets **{wrong} of the {total}** sample images wrong "
            f"({100 * (total - wrong) / total:.1f}% right). This filter: {len(chosen)}"
            f"{f', the {MISTAKES_SHOWN} most confident shown' if len(chosen) > MISTAKES_SHOWN else ''}. "
            f"Each: the image, {shown_map}, then true class → top 3. The sample: "
            f"{found.sample.description}.{self.caveat}"
        )
        shown = [picture(found, i) for i in chosen[:MISTAKES_SHOWN]]
        return [(self._png(p), c) for p, c in shown], summary
