"""Image use cases: build (an operation), list, show, verify, delete."""

from __future__ import annotations

import asyncio
import builtins
from dataclasses import replace

from gureum.config import Config
from gureum.errors import Conflict, NotFound
from gureum.images import build as builder
from gureum.images import recipes
from gureum.model.image import Image
from gureum.model.operation import Operation
from gureum.service.operations import OpContext, OperationManager
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore


class ImageService:
    def __init__(
        self, config: Config, store: ImageStore, instances: InstanceStore, ops: OperationManager
    ) -> None:
        self.config = config
        self.store = store
        self.instances = instances
        self.ops = ops

    def list(self) -> list[Image]:
        return self.store.list()

    def get(self, name: str) -> Image:
        image = self.store.get(name)
        if image is None:
            hint = (
                f"; build it with `gureum image build {name}`"
                if name in recipes.DESCRIPTIONS
                else ""
            )
            raise NotFound(f"no image named {name!r}{hint}")
        return image

    def build(self, name: str) -> Operation:
        recipes.check(name)
        running = self.ops.running("image-build", name)
        if running is not None:
            return running  # one build per image at a time; a second caller follows the first

        async def work(ctx: OpContext) -> dict[str, object]:
            loop = asyncio.get_running_loop()
            b = recipes.builder(
                name, self.config.images_dir, self.config.cache_dir, ctx.progress_threadsafe(loop)
            )
            image, built = await asyncio.to_thread(b.build, self.store.get(name))
            if built:
                self.store.put(image)
            ctx.progress("done" if built else "already up to date", 1.0)
            return {"image": image.to_dict(), "built": built}

        return self.ops.start("image-build", name, work)

    def verify(self, name: str) -> Operation:
        """Re-check every file of an image against its recorded checksum. An operation, with a
        progress line a file (reading a whole image takes a while); its result is
        ``{name, ok, problems}``."""
        image = self.get(name)

        async def work(ctx: OpContext) -> dict[str, object]:
            problems: builtins.list[str] = []
            for done, role in enumerate(image.files):
                ctx.progress(f"checking {role}", done / len(image.files))
                one = replace(image, files={role: image.files[role]})
                problems += await asyncio.to_thread(builder.verify, one)
            ctx.progress(f"{len(problems)} problem(s)" if problems else "intact", 1.0)
            return {"name": name, "ok": not problems, "problems": problems}

        return self.ops.start("image-verify", name, work)

    def delete(self, name: str) -> Image:
        image = self.get(name)
        users = self.instances.count_using_image(name)
        if users:
            raise Conflict(f"image {name!r} is used by {users} instance(s); delete them first")
        self.store.delete(name)
        builder.remove(image)
        return image
