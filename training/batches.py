"""An epoch's batches: the training images shuffled afresh each epoch, the same way in
every process, with an optional per-image policy drawn in DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from training.runtime import ProcessPlacement, seed_for


class ImageTensorDataset(Dataset):
    """uint8 image tensors and labels, with a per-sample transform as torchvision has it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


class PolicyDataset(ImageTensorDataset):
    """Items are (epoch, index): each image's policy draw is seeded by both, so workers
    that live across epochs still draw what a resumed run draws."""

    def __init__(self, images, labels, policy, seed: int):
        super().__init__(images, labels, policy)
        self.seed = seed

    def __getitem__(self, item):
        epoch, i = item
        # The v2 policies draw from the CPU generator only; torch.manual_seed would also
        # reset the GPU's, which drives dropout when --workers 0 runs this in the trainer.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed_for(self.seed, "policy", epoch, i))
            return super().__getitem__(i)


class EpochBatches:
    """The training images, shuffled afresh each epoch (the same permutation in every
    process, each taking every world-th image) and cut into full batches only: a ragged
    last batch would change shapes, which torch.compile answers with a second graph.
    With a per-image policy the batches come from DataLoader workers that live across
    epochs; otherwise the images sit on the device and are indexed there."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        procs: ProcessPlacement,
        policy=None,
        workers: int = 0,
    ):
        self.procs, self.seed, self.policy = procs, seed, policy
        self.per_process = batch_size // procs.world
        self.steps = len(labels) // procs.world // self.per_process
        on = torch.device("cpu") if policy is not None else procs.device
        self.images, self.labels = images.to(on), labels.to(on)
        self.items: list[tuple[int, int]] = []
        self.loader = None
        if policy is not None:
            from torch.utils.data import DataLoader

            # A generator of its own: the loader's first iterator (the first epoch of this
            # process, a resumed one included) would otherwise draw its workers' base seed
            # from torch's global generator and shift that epoch's dropout draws.
            self.loader = DataLoader(
                PolicyDataset(self.images, self.labels, policy, seed),
                batch_size=self.per_process,
                sampler=self,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=procs.device.type == "cuda",
                generator=torch.Generator().manual_seed(seed_for(seed, "loader")),
            )

    def __iter__(self):  # the DataLoader's sampler: this epoch's (epoch, index) items
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches of this process on its device."""
        g = torch.Generator().manual_seed(seed_for(self.seed, "shuffle", epoch))
        used = self.steps * self.per_process * self.procs.world
        mine = torch.randperm(len(self.labels), generator=g)[:used][self.procs.rank :: self.procs.world]
        if self.loader is None:
            mine = mine.to(self.images.device)
            for idx in mine.split(self.per_process):
                yield self.images[idx], self.labels[idx]
            return
        self.items = [(epoch, i) for i in mine.tolist()]
        device = self.procs.device
        for x, y in self.loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
