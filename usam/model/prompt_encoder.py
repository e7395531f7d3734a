"""SAM's prompt encoder plus a zero-initialised class embedding for points and boxes."""
from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder
from torch import nn


class UsamPromptEncoder(PromptEncoder):
    """PromptEncoder with `class_embeddings` (row 0 = unknown class, fixed at zero).

    Rows 1..num_classes-1 start at zero, so a SAM or reference checkpoint behaves exactly as
    without them until they are trained.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int, num_classes: int = 3) -> None:
        super().__init__(embed_dim=embed_dim, image_embedding_size=image_embedding_size,
                         input_image_size=input_image_size, mask_in_chans=mask_in_chans)
        self.class_embeddings = nn.Embedding(num_classes, embed_dim, padding_idx=0)
        nn.init.zeros_(self.class_embeddings.weight)

    def encode(self, batch: int, points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
               point_classes: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               box_classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense (B, C, h, w) embeddings.

        points (B, P, 2) (x, y) in the model frame, labels (B, P) 1/0, classes (B, P) 0..2;
        boxes (B, M, 4) xyxy, box_classes (B, M). As in SAM, points without boxes get one
        padding ("not a point") token.
        """
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty((batch, 0, self.embed_dim), device=device)]
        if points is not None:
            emb = self._embed_points(points, point_labels, pad=boxes is None)
            if point_classes is not None:
                if boxes is None:  # the padding token has class 0 (zero row)
                    point_classes = torch.cat([point_classes, point_classes.new_zeros(batch, 1)], dim=1)
                emb = emb + self.class_embeddings(point_classes)
            sparse.append(emb)
        if boxes is not None:
            m = boxes.shape[1]
            emb = self._embed_boxes(boxes.reshape(batch * m, 4)).reshape(batch, 2 * m, self.embed_dim)
            if box_classes is not None:  # both corners of a box carry its class
                emb = emb + self.class_embeddings(box_classes.repeat_interleave(2, dim=1))
            sparse.append(emb)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            batch, -1, self.image_embedding_size[0], self.image_embedding_size[1])
        return torch.cat(sparse, dim=1), dense
