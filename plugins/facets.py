"""``facets``: the facets of a polysemantic unit (Circuits thread 7.8; Nguyen et al. 2016, Lucid's diversity).

1. **Top examples** in one pass over the images (a stream is fine): the unit's spatial max per image,
   kept with a running top-``n_examples`` (:class:`visionlens.reducers.TopK`) and, for the examples
   currently in it, their *embedding*: ``embed="activations"`` is the hook's whole activation vector
   at the unit's argmax location (what the layer sees there); a hook name embeds each image by that
   hook's spatially mean-pooled activations (the layer below, or ``hook_pooled`` for an image embedding).
2. **Facets** = k-means clusters (scikit-learn, ``n_init=4``) of the L2-normalised embeddings (their
   directions), ``k`` in ``2..max_facets`` chosen by the silhouette's margin over a *null*: the same
   clustering of Gaussian samples with the normalised embeddings' mean and covariance (unimodal data
   that k-means still splits), ``null_draws`` draws, the largest null silhouette per ``k``. The fewest
   facets within ``tolerance`` of the best margin win; when no ``k`` beats its null by ``min_margin``,
   the unit has one facet.
3. **Feature visualization** (:mod:`visionlens.featurevis`): ``n_diverse`` images of the unit with
   Lucid's diversity term (``channel - diversity_weight * diversity(hook)``), and one image per facet
   steered to it: ``channel + steer * direction(embed hook, facet centroid - mean of the top examples)``.
   Each steered image is embedded like the examples; ``steering_accuracy`` is the share of facets whose
   image lands nearest to its own facet's centroid (k-means' rule, on the normalised embedding).

:func:`facet_purity` scores the facets against known labels (planted factors): purity (the share of
examples in their facet's majority label) and whether distinct facets have distinct majority labels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from visionlens import featurevis as fv
from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.data import as_images
from visionlens.hookspecs import hookimpl
from visionlens.reducers import TopK
from visionlens.results import Result, Table, new_figure

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["Facets", "FacetsResult", "facet_purity", "cluster_facets"]


def _unit_map(act: Tensor, unit: int) -> Tensor:
    """``[B, positions...]`` of one unit: channel ``unit`` of ``[B, C, H, W]``, feature ``unit`` of ``[B, ..., D]``."""
    if act.ndim == 4:
        return act[:, unit]
    if act.ndim == 2:
        return act[:, unit : unit + 1]
    return act[..., unit]


def _vectors_at(act: Tensor, flat_pos: Tensor) -> Tensor:
    """``[B, C]``: the feature vector of each image at a flat spatial (or token) position."""
    if act.ndim == 4:
        b, c = act.shape[:2]
        return act.reshape(b, c, -1)[torch.arange(b), :, flat_pos]
    if act.ndim == 2:
        return act
    b, d = act.shape[0], act.shape[-1]
    return act.reshape(b, -1, d)[torch.arange(b), flat_pos]


def _pooled(act: Tensor) -> Tensor:
    """``[B, C]``: spatial / token mean of a conv map or token sequence."""
    if act.ndim == 4:
        return act.mean(dim=(2, 3))
    if act.ndim == 2:
        return act
    return act.reshape(act.shape[0], -1, act.shape[-1]).mean(dim=1)


def _unit_norm(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def cluster_facets(
    emb: np.ndarray,
    max_facets: int = 4,
    seed: int = 0,
    null_draws: int = 8,
    n_facets: int = 0,
    min_margin: float = 0.1,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """k-means facets of embeddings ``[n, d]`` with ``k`` chosen against a Gaussian null (module docstring).

    Embeddings are compared by direction (L2-normalised, cosine geometry); the null draws Gaussian
    samples with the normalised embeddings' mean and covariance. ``k`` is the fewest facets whose
    margin (silhouette - null) is within ``tolerance`` of the best margin; a best margin under
    ``min_margin`` means one facet. Returns ``labels [n]``, ``k``, ``silhouette {k: s}`` and
    ``null {k: s}``. ``n_facets > 0`` fixes ``k``.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = emb.shape[0]
    z = _unit_norm(emb)
    mean = z.mean(axis=0)
    ks = [n_facets] if n_facets else list(range(2, min(max_facets, n - 1) + 1))
    rng = np.random.default_rng(seed)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    scale = s / math.sqrt(max(n - 1, 1))
    sil: dict[int, float] = {}
    null: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}

    def fit(data: np.ndarray, k: int) -> tuple[np.ndarray, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab = KMeans(k, n_init=4, random_state=seed).fit_predict(data)
        return lab, (float(silhouette_score(data, lab)) if len(set(lab.tolist())) > 1 else -1.0)

    for k in ks:
        fits[k], sil[k] = fit(z, k)
        draws = [fit((rng.standard_normal((n, len(s))) * scale) @ vt + mean, k)[1] for _ in range(null_draws)]
        null[k] = max(draws) if draws else -1.0
    best = n_facets
    if not n_facets:
        margin = {k: sil[k] - null[k] for k in ks}
        top = max(margin.values())
        # the fewest facets whose margin is within `tolerance` of the best one; none below `min_margin`
        best = 1 if top < min_margin else min(k for k in ks if margin[k] >= top - tolerance)
    labels = fits[best] if best > 1 else np.zeros(n, dtype=np.int64)
    return {"labels": labels.astype(np.int64), "k": best, "silhouette": sil, "null": null}


def facet_purity(facets: Sequence[int], labels: Sequence[Any]) -> dict[str, Any]:
    """Purity of facet assignments against known labels (e.g. planted factors).

    ``purity``: share of examples whose label is their facet's majority label; ``majority``: each facet's
    majority label; ``separate``: every label present is the majority of some facet and no two facets
    share one (each factor recovered as its own facet).
    """
    if len(facets) != len(labels):
        raise ValueError(f"facet_purity: {len(facets)} facet ids but {len(labels)} labels.")
    groups: dict[int, list[Any]] = {}
    for f, lab in zip(facets, labels):
        groups.setdefault(int(f), []).append(lab)
    majority, hits = {}, 0
    for f, labs in sorted(groups.items()):
        vals, counts = np.unique(np.asarray(labs, dtype=object).astype(str), return_counts=True)
        majority[f] = str(vals[int(np.argmax(counts))])
        hits += int(counts.max())
    present = {str(v) for v in labels}
    separate = len(set(majority.values())) == len(majority) and present <= set(majority.values())
    return {"purity": hits / max(len(labels), 1), "majority": majority, "separate": bool(separate)}


class Facets(Analysis):
    """Facets of a (polysemantic) unit: clustered top examples, diverse and facet-steered feature visualizations."""

    name = "facets"
    summary = (
        "Facets of a unit: its top dataset examples clustered (on activations or image embeddings) into "
        "facets chosen against a Gaussian null, Lucid-style diverse feature visualizations, and one "
        "feature visualization steered to each facet."
    )

    @dataclass
    class Config:
        hook: str = option("", help="the unit's hook (a layer alias works)")
        unit: int = option(0, min=0, help="channel / feature index")
        n_examples: int = option(64, min=4, max=100_000, help="top dataset examples to cluster")
        embed: str = option("activations", help="'activations' (hook vector at the argmax) or a hook name (pooled)")
        max_facets: int = option(4, min=2, max=32, help="largest number of facets tried")
        n_facets: int = option(0, min=0, max=32, help="fix the number of facets (0 = choose against the null)")
        null_draws: int = option(8, min=0, max=1000, help="Gaussian null draws per k")
        min_margin: float = option(0.1, min=0.0, max=2.0, help="silhouette margin over the null needed for 2+ facets")
        tolerance: float = option(0.05, min=0.0, max=2.0, help="prefer fewer facets within this margin of the best")
        batch_size: int = option(32, min=1, max=4096, help="images per forward pass")
        n_diverse: int = option(4, min=0, max=64, help="diverse feature visualizations (0 = none)")
        diversity_weight: float = option(100.0, min=0.0, help="weight of Lucid's diversity term")
        steer: float = option(1.0, min=0.0, help="weight of the facet direction in the steered objective")
        fv_steps: int = option(128, min=0, max=100_000, help="feature-visualization steps (0 = no images)")
        fv_size: int = option(64, min=8, max=1024, help="feature-visualization image size")
        fv_lr: float = option(0.05, min=1e-5, max=10.0, help="feature-visualization learning rate")
        seed: int = option(0, help="seed of k-means, the null and the renders")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        hooks = [h for h in model.hook_dict if h.endswith("hook_out")] or list(model.hook_dict)
        return {"hook": hooks[len(hooks) // 2], "n_examples": 8, "fv_steps": 2, "fv_size": 32, "null_draws": 1}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "FacetsResult":
        if not config.hook:
            raise ConfigError("facets: set hook= (the unit's hook) and unit=.")
        hook = model.resolve_hook(config.hook)
        embed_hook = hook if config.embed == "activations" else model.resolve_hook(config.embed)
        images = as_images(inputs)
        top = TopK(config.n_examples)
        emb: dict[int, Tensor] = {}
        n_seen = 0
        model.eval()
        with torch.no_grad():
            for start, x in images.batches(model, config.batch_size):
                _, cache = model.run_with_cache(x, names_filter=lambda n: n in (hook, embed_hook))
                act = cache[hook]
                if not 0 <= config.unit < (act.shape[1] if act.ndim == 4 else act.shape[-1]):
                    raise ConfigError(f"facets: unit {config.unit} out of range for {hook!r} {tuple(act.shape)}.")
                um = _unit_map(act, config.unit).reshape(x.shape[0], -1)
                val, pos = um.max(dim=1)
                vec = _vectors_at(act, pos) if config.embed == "activations" else _pooled(cache[embed_hook])
                idx = torch.arange(start, start + x.shape[0])
                top.update(val[:, None], idx)
                keep = set(top.index[:, 0].tolist())  # type: ignore[index]
                for j, i in enumerate(idx.tolist()):
                    if i in keep:
                        emb[i] = vec[j].float().cpu()
                emb = {i: v for i, v in emb.items() if i in keep}
                n_seen += x.shape[0]
        if top.values is None or top.seen < 3:
            raise ConfigError(f"facets needs at least 3 images; got {n_seen}.")
        order = top.index[:, 0].tolist()  # type: ignore[index]
        values = top.values[:, 0].float()
        Z = torch.stack([emb[i] for i in order]).double().numpy()
        cl = cluster_facets(
            Z, config.max_facets, config.seed, config.null_draws, config.n_facets, config.min_margin, config.tolerance
        )
        labels = cl["labels"]
        k = int(cl["k"])
        U = _unit_norm(Z)
        centroids = np.stack([U[labels == f].mean(0) for f in range(k)])  # in the normalised geometry
        tensors: dict[str, Tensor] = {
            "examples/index": torch.tensor(order),
            "examples/activation": values,
            "examples/facet": torch.from_numpy(labels),
            "examples/embedding": torch.from_numpy(Z).float(),
            "facets/centroid": torch.from_numpy(centroids).float(),
        }
        table = Table(["facet", "size", "mean_activation", "examples"], title="Facets (top examples by activation)")
        for f in range(k):
            members = [i for i, lab in zip(order, labels.tolist()) if lab == f]
            acts = values[torch.from_numpy(labels == f)]
            table.rows.append([f, len(members), float(acts.mean()), [images.name(i) for i in members[:12]]])
        meta: dict[str, Any] = {
            "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
            "hook": hook,
            "embed_hook": embed_hook,
            "n_images": n_seen,
            "n_facets": k,
            "silhouette": {str(kk): v for kk, v in cl["silhouette"].items()},
            "null_silhouette": {str(kk): v for kk, v in cl["null"].items()},
            "names": [images.name(i) for i in order],
        }
        if images.random_access and hasattr(images, "display"):
            try:
                thumbs = np.stack([images.display(i, model) for i in order[: min(len(order), 64)]])
                tensors["examples/thumbnails"] = torch.from_numpy(thumbs)
            except (NotImplementedError, TypeError):
                pass
        if config.fv_steps:
            self._render(model, hook, embed_hook, config, centroids, U.mean(0), tensors, meta)
        return FacetsResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"facets": table},
        )

    def _render(
        self,
        model: HookedVisionModel,
        hook: str,
        embed_hook: str,
        config: Any,
        centroids: np.ndarray,
        centre: np.ndarray,
        tensors: dict[str, Tensor],
        meta: dict[str, Any],
    ) -> None:
        kw = dict(steps=config.fv_steps, size=config.fv_size, lr=config.fv_lr, seed=config.seed, progress=False)
        unit_obj = fv.channel(hook, config.unit)
        if config.n_diverse:
            obj = unit_obj - config.diversity_weight * fv.diversity(hook) if config.n_diverse > 1 else unit_obj
            r = fv.render(model, obj, images_per_objective=config.n_diverse, **kw)  # type: ignore[arg-type]
            tensors["fv/diverse"] = r.images.detach().cpu()
        steered = []
        for f in range(centroids.shape[0]):
            d = torch.from_numpy(centroids[f] - centre).float()
            d = d / d.norm().clamp_min(1e-12)
            steered.append(unit_obj + config.steer * fv.direction(embed_hook, d, label=f"facet{f}"))
        r = fv.render(model, steered, **kw)  # type: ignore[arg-type]
        tensors["fv/facets"] = r.images.detach().cpu()
        # where do the renders land? embed them like the examples; nearest centroid (k-means' own rule)
        for name in ("facets", "diverse"):
            if f"fv/{name}" not in tensors:
                continue
            vec, unit_act = self._embed(model, hook, embed_hook, config, tensors[f"fv/{name}"])
            E = _unit_norm(vec.double().numpy())
            nearest = ((E[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
            tensors[f"fv/{name}_activation"] = unit_act
            meta[f"{name}_nearest_facet"] = nearest.tolist()
        meta["steering_accuracy"] = float(
            (np.asarray(meta["facets_nearest_facet"]) == np.arange(centroids.shape[0])).mean()
        )

    @staticmethod
    def _embed(
        model: HookedVisionModel, hook: str, embed_hook: str, config: Any, imgs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Embedding ``[N, D]`` and the unit's peak activation ``[N]`` of ``[0, 1]`` images."""
        with torch.no_grad():
            x = fv.to_model_input(model, imgs.to(model.device))
            _, cache = model.run_with_cache(x, names_filter=lambda n: n in (hook, embed_hook))
            um = _unit_map(cache[hook], config.unit).reshape(x.shape[0], -1)
            peak, pos = um.max(dim=1)
            vec = _vectors_at(cache[hook], pos) if config.embed == "activations" else _pooled(cache[embed_hook])
        return vec.float().cpu(), peak.float().cpu()


class FacetsResult(Result):
    """Result of ``facets``: ``facet_of(example)``, ``examples(facet)``, ``purity(labels)`` and the figures."""

    @property
    def n_facets(self) -> int:
        return int(self.meta["n_facets"])

    def examples(self, facet: int) -> list[int]:
        """Dataset indices of the top examples in ``facet`` (highest activation first)."""
        idx, lab = self.tensors["examples/index"], self.tensors["examples/facet"]
        return [int(i) for i, f in zip(idx, lab) if int(f) == facet]

    def purity(self, labels: Any) -> dict[str, Any]:
        """:func:`facet_purity` of the facets against ``labels[dataset index]`` (e.g. the planted factor)."""
        idx = self.tensors["examples/index"].tolist()
        return facet_purity(self.tensors["examples/facet"].tolist(), [labels[i] for i in idx])

    def figures(self) -> dict[str, Any]:
        figs = {"overview": self.plot()}
        if "fv/facets" in self.tensors or "fv/diverse" in self.tensors:
            figs["feature_visualizations"] = self.plot_fv()
        return figs

    def plot(self) -> Any:
        """Each facet's top examples (thumbnails when the images allow), with its size and mean activation."""
        k = self.n_facets
        thumbs = self.tensors.get("examples/thumbnails")
        per = 8
        fig = new_figure(1.4 * per + 1.5, 1.5 * k + 0.6)
        for f in range(k):
            members = [j for j, lab in enumerate(self.tensors["examples/facet"].tolist()) if lab == f][:per]
            acts = self.tensors["examples/activation"]
            for c, j in enumerate(members):
                ax = fig.add_subplot(k, per, f * per + c + 1)
                if thumbs is not None and j < thumbs.shape[0]:
                    ax.imshow(thumbs[j].numpy())
                else:
                    ax.text(0.5, 0.5, str(int(self.tensors["examples/index"][j])), ha="center", va="center")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{float(acts[j]):.3g}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(f"facet {f}\n(n={len(self.examples(f))})", fontsize=7)
        fig.suptitle(f"{self.meta['hook']} unit {self.config.get('unit')}: facets of the top examples", fontsize=9)
        return fig

    def plot_fv(self) -> Any:
        """Diverse feature visualizations (top row) and one image steered to each facet (bottom row)."""
        rows = [
            (n, self.tensors[k]) for n, k in (("diverse", "fv/diverse"), ("facet", "fv/facets")) if k in self.tensors
        ]
        cols = max(t.shape[0] for _, t in rows)
        fig = new_figure(1.6 * cols + 0.5, 1.8 * len(rows))
        near = {
            "diverse": self.meta.get("diverse_nearest_facet", []),
            "facet": self.meta.get("facets_nearest_facet", []),
        }
        for r, (name, t) in enumerate(rows):
            for c in range(t.shape[0]):
                ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
                img = t[c].permute(1, 2, 0).clamp(0, 1).numpy()
                ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
                ax.set_xticks([])
                ax.set_yticks([])
                lands = f" (lands in {near[name][c]})" if c < len(near[name]) else ""
                title = (f"diverse {c}" if name == "diverse" else f"facet {c}") + lands
                ax.set_title(title, fontsize=7)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [Facets]
