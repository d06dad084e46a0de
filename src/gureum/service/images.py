"""Image use cases: build (an operation), list, show, verify, delete."""

from __future__ import annotations

import asyncio
import builtins
import shutil
from pathlib import Path

from gureum.config import Config
from gureum.errors import Conflict, NotFound
from gureum.images import build as builder
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
            hint = f"; build it with `gureum image build {name}`" if name in builder.RECIPES else ""
            raise NotFound(f"no image named {name!r}{hint}")
        return image

    def build(self, name: str) -> Operation:
        recipe = builder.recipe(name)
        running = self.ops.running("image-build", name)
        if running is not None:
            return running  # one build per image at a time; a second caller follows the first

        async def work(ctx: OpContext) -> dict[str, object]:
            loop = asyncio.get_running_loop()
            b = builder.Builder(
                recipe, self.config.images_dir, self.config.cache_dir, ctx.progress_threadsafe(loop)
            )
            image, built = await asyncio.to_thread(b.build, self.store.get(name))
            if built:
                self.store.put(image)
            ctx.progress("done" if built else "already up to date", 1.0)
            return {"image": image.to_dict(), "built": built}

        return self.ops.start("image-build", name, work)

    async def verify(self, name: str) -> builtins.list[str]:
        return await asyncio.to_thread(builder.verify, self.get(name))

    def delete(self, name: str) -> Image:
        image = self.get(name)
        users = self.instances.count_using_image(name)
        if users:
            raise Conflict(f"image {name!r} is used by {users} instance(s); delete them first")
        self.store.delete(name)
        shutil.rmtree(Path(image.path).parent, ignore_errors=True)
        return image
