"""The configuration's keys: one frozen dataclass per conf section, each field one key with its
default, what it means and its range. Everything else is derived from these declarations: the
defaults tree that a user's conf is merged onto and checked against, the commented defaults that
`python -m dynavatar.config` prints, and the `runconf.conf` written beside each experiment.

To add a key, add one line to its section, e.g. in `TrainConf`:

    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up (0: none)", NON_NEGATIVE)

then read it as `conf.train.warmup_epochs`. Keys of the paper's confs that DynAvatar does not use,
and old names of keys, are listed in `compat.py`, not here.

`load_conf` builds a `Conf` once; the rest of the package reads typed attributes
(`conf.train.learning_rate`) and never re-parses or re-casts conf values. `check()` of a section
returns (key, problem) pairs for values of the right type that the keys' ranges cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyhocon import ConfigTree

from .section import AT_LEAST_ONE, FRACTION_BELOW_ONE, NON_NEGATIVE, POSITIVE, Section, setting, subsection


# ---- train ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConf(Section):
    exps_folder: str = setting("./data/experiments", "experiments are written to exps_folder/subject/methodname/")
    methodname: str = setting("dynavatar", "the experiment's folder name under its subject")
    nepoch: int = setting(600, "epochs to train; the command line's --nepoch wins", AT_LEAST_ONE)
    learning_rate: float = setting(1.0e-4, "Adam's learning rate for the points and networks", POSITIVE)
    learning_rate_cam: float = setting(5.0e-4, "SparseAdam's learning rate for the per-frame inputs", POSITIVE)
    max_points_training: int = setting(102400, "batch size = min(max_points_training / n_points, max_batch)",
                                       AT_LEAST_ONE)
    max_batch: int = setting(8, "most frames in one step (see max_points_training)", AT_LEAST_ONE)
    prune_grow_every: int = setting(1, "prune/grow (and radius) steps happen at epochs divisible by this",
                                    AT_LEAST_ONE)
    plot_freq: int = setting(1, "epochs between renderings of test frames (and test PSNR) to TensorBoard",
                             AT_LEAST_ONE)
    save_freq: int = setting(1, "epochs between checkpoints ('latest'; see numbered_save_every)",
                             AT_LEAST_ONE)
    sched_milestones: tuple[int, ...] = setting((80, 100), "learning_rate is multiplied by sched_factor at "
                                                           "each of these epochs", NON_NEGATIVE)
    sched_factor: float = setting(0.5, "see sched_milestones", POSITIVE)
    optimize_expression: bool = setting(True, "refine each training frame's expression")
    optimize_camera: bool = setting(True, "refine each training frame's FLAME pose and camera translation")
    optimize_inputs_after_epoch: int = setting(10, "per-frame inputs are stepped only in epochs after this one")
    refine_per_frame_only: bool = setting(False, "after each epoch that refines the inputs, take from them the mean "
                                                 "of their change over all training frames, so that only what "
                                                 "differs per frame is refined (docs/RECIPES.md)")
    refine_camera_translation: bool = setting(False, "render with the refined per-frame camera translation (the "
                                                     "reference refines it but renders with the tracked one)")
    frames_per_epoch: int = setting(0, "0: an epoch is the whole training set (the paper); N: N frames drawn "
                                       "afresh each epoch, so a schedule means the same steps for any video length")
    warmup_epochs: int = setting(0, "learning_rate rises linearly, step by step, from 0 to its value over this many "
                                    "epochs (0: the full rate from the first step, the paper; docs/RECIPES.md)",
                                 NON_NEGATIVE)
    keep_optimizer_state: bool = setting(False, "carry Adam's moments across prune/grow steps once the point count "
                                                "is final; the paper rebuilds the optimizer at each (docs/RECIPES.md)")
    weight_average_epochs: float = setting(0.0, "checkpoints (so evaluation and export) hold an exponential moving "
                                                "average of the weights over about this many epochs' steps; "
                                                "training steps the live ones (0: the weights as stepped, the paper; "
                                                "docs/RECIPES.md)", NON_NEGATIVE)
    seed: int = setting(0, "seed of every random draw (initial points, data order, growth)", NON_NEGATIVE)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    tf32: bool = setting(False, "CUDA matrix products in TF32 (faster, 10-bit mantissa); false: full float32")
    plot_n_images: int = setting(4, "test images logged to TensorBoard per plot", NON_NEGATIVE)
    max_nonfinite_steps: int = setting(3, "a step with a non-finite loss or gradient is skipped; this many in a "
                                          "row stop the run (exit code 2), 'latest' kept as the last good state",
                                       AT_LEAST_ONE)
    strategy: str = setting("coarse_to_fine", "what edits the points during training: coarse_to_fine (the paper's "
                                              "prune/grow schedule of model.point_cloud) | static (never edits them)")
    numbered_save_every: int = setting(5, "every this many saves (and the last epoch's) is also kept as "
                                          "checkpoints/<part>/<epoch>.pth beside 'latest'", AT_LEAST_ONE)
    gpu_image_fraction: float = setting(0.25, "preloaded training images go to the GPU when they take at most this "
                                              "fraction of its free memory (0: they stay in host memory)",
                                        NON_NEGATIVE)
    wait_free_intersections: str = setting("auto", "gsplat's tile intersections in a buffer sized on the host, so "
                                                   "that a step never waits for the GPU: auto (in steps of one frame) "
                                                   "| on | off (docs/RENDERING.md)")

    def check(self) -> list[tuple[str, str]]:
        if self.frames_per_epoch < 0:
            return [("frames_per_epoch", f"must be 0 (the whole training set) or more, got {self.frames_per_epoch}")]
        if self.wait_free_intersections not in ("auto", "on", "off"):
            return [("wait_free_intersections", f"must be auto, on or off, got {self.wait_free_intersections!r}")]
        return []


# ---- loss ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossConf(Section):
    rgb_weight: float = setting(1.0, "weight of the L1 photometric loss", NON_NEGATIVE)
    ssim_weight: float = setting(0.25, "weight of (1 - SSIM)", NON_NEGATIVE)
    fused_ssim: bool = setting(True, "on a GPU with Triton, 1 - SSIM and its gradient in two fused kernels "
                                     "(false: PyTorch's convolutions; the same maths)")
    vgg_feature_weight: float = setting(0.1, "weight of the VGG16 perceptual loss (0: no VGG16 weights needed)",
                                        NON_NEGATIVE)
    vgg_weights_path: str = setting("", "VGG16's weights; empty: the torch hub cache (vgg16-397923af.pth)")
    mask_weight: float = setting(0.0, "weight of the L1 distance between the rendered alpha and the mask (0: off, "
                                      "the paper)", NON_NEGATIVE)
    lbs_weight: float = setting(10.0, "weight of the FLAME priors on the deformer's outputs", NON_NEGATIVE)
    flame_prior_milestones: tuple[int, ...] = setting((20, 30, 50, 70), "lbs_weight is multiplied by "
                                                      "flame_prior_factor at each of these epochs", NON_NEGATIVE)
    flame_prior_factor: float = setting(0.5, "see flame_prior_milestones", POSITIVE)
    smoothness_weight: float = setting(0.0, "weight of the deformer's smoothness: its blendshapes, correctives and "
                                            "skinning weights at sampled points against those at the same points "
                                            "moved by smoothness_jitter (0: off, the paper)", NON_NEGATIVE)
    smoothness_jitter: float = setting(0.02, "standard deviation of the smoothness term's displacement (canonical "
                                             "units, FLAME x4: a head is about 1 wide)", POSITIVE)
    smoothness_points: int = setting(2048, "points sampled for the smoothness term each step", AT_LEAST_ONE)
    point_color_weight: float = setting(0.0, "weight of the per-Gaussian colour offsets' mean squared size "
                                             "(model.point_colors; 0: off)", NON_NEGATIVE)
    opacity_weight: float = setting(0.0, "weight of the mean o(1 - o) of the opacities o of the avatar's Gaussians "
                                         "as posed for each frame, which pushes each toward 0 or 1 (0: off, the "
                                         "paper)", NON_NEGATIVE)
    flame_distance_chunk: int = setting(4096, "points per chunk of the nearest-FLAME-vertex search (256 is faster "
                                              "on a CPU; a GPU with Triton searches in one fused kernel instead)",
                                        AT_LEAST_ONE)


# ---- dataset -------------------------------------------------------------------------------------

SYNTHETIC_TEST_MOTIONS = ("near", "extrapolate", "expressions")  # the test videos' kinds (subject_generator/motion.py)

@dataclass(frozen=True)
class SplitConf(Section):
    sub_dir: tuple[str, ...] = setting((), "the split's video folders (a list, or one name)", single=True)
    img_res: tuple[int, ...] = setting((512, 512), "[height, width] of the frames in pixels")
    subsample: int | tuple[int, ...] = setting(1, "every N-th frame, a [start, end] range or a list of frames")
    load_images: bool = setting(False, "hold the split's images in memory (false: read them at each step)")

    def check(self) -> list[tuple[str, str]]:
        if not (len(self.img_res) == 2 and all(isinstance(v, int) and v > 0 for v in self.img_res)):
            return [("img_res", f"must be [height, width] in pixels, got {list(self.img_res)!r}")]
        if isinstance(self.subsample, int) and self.subsample < 1:
            return [("subsample", f"must be a step of at least 1 (or a list of frames), got {self.subsample}")]
        return []


@dataclass(frozen=True)
class DatasetConf(Section):
    data_folder: str = setting("./data/datasets", "videos are read from data_folder/subject_name/subject_name/")
    subject_name: str = setting("subject1", "the subject's folder name")
    json_name: str = setting("flame_params.json", "each video's file of FLAME parameters and cameras")
    use_mean_expression: bool = setting(True, "canonical expression: the training frames' mean (false: zeros)")
    use_var_expression: bool = setting(True, "divide the blendshape prior by each expression component's variance")
    canonical_jaw: float = setting(0.4, "jaw opening of the canonical pose, in radians about x")
    use_background: bool = setting(False, "learn a background image (false: images are composited on white)")
    synthetic: bool = setting(False, "generate a synthetic subject into data_folder when it is missing")
    synthetic_frames: int = setting(30, "frames per video of a generated synthetic subject", AT_LEAST_ONE)
    synthetic_seed: int = setting(0, "seed of a generated synthetic subject", NON_NEGATIVE)
    synthetic_test_motion: str = setting("near", "test videos of a generated synthetic subject: near (unseen "
                                                 "combinations, a bit beyond training) | extrapolate | expressions "
                                                 "(docs/DATA_FORMAT.md)")
    train: SplitConf = subsection(SplitConf, "the training videos")
    test: SplitConf = subsection(SplitConf, "the test videos")

    def check(self) -> list[tuple[str, str]]:
        if self.synthetic_test_motion not in SYNTHETIC_TEST_MOTIONS:
            return [("synthetic_test_motion", f"must be one of {', '.join(SYNTHETIC_TEST_MOTIONS)}, "
                                              f"got {self.synthetic_test_motion!r}")]
        return []

    def split(self, name: str) -> SplitConf:
        return {"train": self.train, "test": self.test}[name]


# ---- evaluation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationConf(Section):
    test_fit_steps: int = setting(20, "steps per batch when fitting test-frame inputs (the paper's 20)", NON_NEGATIVE)
    test_fit_learning_rate: float = setting(0.0, "SparseAdam's rate when fitting test-frame inputs; 0: "
                                                 "train.learning_rate_cam, the paper's rule", NON_NEGATIVE)
    fit_camera_translation: bool = setting(False, "also fit the test frames' camera translation (the reference "
                                                  "fits expression and pose only)")
    lpips_alexnet_path: str = setting("", "LPIPS's AlexNet weights; empty: the torch hub cache "
                                          "(alexnet-owt-7be5be79.pth)")
    lpips_lin_path: str = setting("", "LPIPS's linear layers; empty: weights/v0.1/alex.pth of an installed lpips")
    video_fps: float = setting(25.0, "frame rate of the rendered videos", POSITIVE)
    turntable_frames: int = setting(48, "frames of the turntable video", AT_LEAST_ONE)


# ---- model ---------------------------------------------------------------------------------------

def _hidden_layers(dims: tuple[int, ...]) -> list[tuple[str, str]]:
    """A network's `dims` name at least one hidden layer (an empty list is a typo, not a model)."""
    return [] if dims else [("dims", "must list at least one hidden layer width, e.g. [256, 256], got []")]


@dataclass(frozen=True)
class CanonicalNetworkConf(Section):
    """`model.geometry_network`: the canonical (appearance) network."""

    dims: tuple[int, ...] = setting((256,) * 7, "widths of the hidden layers", AT_LEAST_ONE)
    geometric_init: bool = setting(True, "IDR's geometric initialisation (encoded frequencies start switched off)")
    skip_in: tuple[int, ...] = setting((3,), "layers that also take the encoded input", NON_NEGATIVE)
    weight_norm: bool = setting(True, "weight-normalised linear layers")
    multires: int = setting(6, "frequencies of the positional encoding (0: none)", NON_NEGATIVE)

    def check(self) -> list[tuple[str, str]]:
        if 0 in self.skip_in:
            return [("skip_in", f"must not hold layer 0, which takes the encoded input already, got "
                                f"{list(self.skip_in)}")]
        return _hidden_layers(self.dims)


@dataclass(frozen=True)
class DeformerNetworkConf(Section):
    dims: tuple[int, ...] = setting((128,) * 4, "widths of the hidden layers", AT_LEAST_ONE)
    weight_norm: bool = setting(True, "weight-normalised linear layers")
    multires: int = setting(0, "frequencies of the positional encoding (0: none)", NON_NEGATIVE)
    num_exp: int = setting(50, "expression components", AT_LEAST_ONE)
    ghostbone: bool = setting(True, "skinning weights also over a ghost bone that never moves")
    deform_c: bool = setting(True, "learn a canonical offset per point")

    def check(self) -> list[tuple[str, str]]:
        return _hidden_layers(self.dims)


GAUSSIAN_INPUTS = ("posed", "nonrigid")
SHADING_NORMALS = ("skinned", "flame")  # model.shading_normals
COMPILE_MODES = ("off", "on", "auto")  # model.compile (model/compiled.py)


@dataclass(frozen=True)
class GaussianNetworkConf(Section):
    dims: tuple[int, ...] = setting((64,) * 3, "widths of the hidden layers", AT_LEAST_ONE)
    weight_norm: bool = setting(True, "weight-normalised linear layers")
    input: str = setting("posed", "what the network sees of a point's motion: posed (the paper's: from x' to its "
                         "posed position, the head's turn and shift included) or nonrigid (the expression "
                         "blendshapes and pose correctives alone, in the canonical frame: the same offsets "
                         "whatever the head's pose)")

    def check(self) -> list[tuple[str, str]]:
        problems = _hidden_layers(self.dims)
        if self.input not in GAUSSIAN_INPUTS:
            problems.append(("input", f"must be one of {', '.join(GAUSSIAN_INPUTS)}, got {self.input!r}"))
        return problems


GROW_FROM = ("uniform", "gradient")


@dataclass(frozen=True)
class PointSchedule(Section):
    """`model.point_cloud`: the coarse-to-fine schedule of the point set and its radius. From epoch
    schedule_epochs[i] on, the cloud grows to schedule_points[i] (capped at max_points) and the radius
    is multiplied by radius_factors[i] at that epoch."""

    n_init_points: int = setting(400, "points at the start, on a sphere", AT_LEAST_ONE)
    max_points: int = setting(100000, "cap of the point count", AT_LEAST_ONE)
    init_radius: float = setting(0.5, "radius of the initial sphere of points", POSITIVE)
    radius_factor: float = setting(0.15, "point radius = radius_factor x 0.75 ** log2(n_init_points / 100) at "
                                         "the start", POSITIVE)
    schedule_epochs: tuple[int, ...] = setting((5, 10, 15, 20, 25, 30, 40, 50, 60), "epochs of the growth steps, "
                                               "increasing", NON_NEGATIVE)
    schedule_points: tuple[int, ...] = setting((800, 1600, 3200, 6400, 10000, 20000, 40000, 80000, 100000),
                                               "point count from each growth step on", AT_LEAST_ONE)
    radius_factors: tuple[float, ...] = setting((0.75,) * 8 + (0.9,), "radius factor at each growth step",
                                                POSITIVE)
    late_radius_every: int = setting(5, "after the last growth step, every this many epochs ...", NON_NEGATIVE)
    late_radius_factor: float = setting(0.75, "... the radius is multiplied by this", POSITIVE)
    fine_noise_epoch: int = setting(100, "after this epoch, new points get fixed noise ...")
    fine_noise: float = setting(0.004, "... of this size instead of the radius", NON_NEGATIVE)
    grow_from: str = setting("uniform", "which surviving points the grown ones copy: uniform (the paper's: any, "
                                        "equally) | gradient (in proportion to each one's mean image-space "
                                        "position gradient over the epoch, the signal 3D Gaussian Splatting "
                                        "densifies by)")

    def check(self) -> list[tuple[str, str]]:
        if self.grow_from not in GROW_FROM:
            return [("grow_from", f"must be one of {', '.join(GROW_FROM)}, got {self.grow_from!r}")]
        lengths = (len(self.schedule_epochs), len(self.schedule_points), len(self.radius_factors))
        if len(set(lengths)) != 1:
            return [("schedule_epochs", "schedule_epochs, schedule_points and radius_factors must have the same "
                                        f"length (got {lengths[0]}, {lengths[1]}, {lengths[2]})")]
        if list(self.schedule_epochs) != sorted(self.schedule_epochs):
            return [("schedule_epochs", f"must be increasing, got {list(self.schedule_epochs)}")]
        if self.max_points < self.n_init_points:
            return [("max_points", f"({self.max_points}) must be at least n_init_points ({self.n_init_points}): "
                                   f"the cap would cut the initial points")]
        return []


@dataclass(frozen=True)
class ModelConf(Section):
    prune_thresh: float = setting(0.1, "a point below this opacity in every frame of an epoch is pruned",
                                  FRACTION_BELOW_ONE)
    rasterizer: str = setting("auto", "auto | torch | gsplat | inria (docs/RENDERING.md)")
    flame_model_path: str = setting("./data/FLAME2020/generic_model.pkl", "FLAME 2020's model, or \"synthetic\"")
    flame_landmark_path: str = setting("./data/FLAME2020/landmark_embedding.npy", "FLAME's 68-landmark embedding")
    max_scale: float = setting(0.025, "scales are sigmoid(.) x max_scale (+ point radius), in FLAME x4 units; "
                                      "the paper uses 0.025 for 512 px video and 0.01 for 1024 px", POSITIVE)
    rotate_gaussians: bool = setting(False, "turn each Gaussian with the rotation of its skinning transform (the "
                                            "reference moves Gaussians but never turns them)")
    point_colors: bool = setting(False, "a learnt colour offset per Gaussian beside the colour network")
    shading: bool = setting(False, "colour = albedo x a learnt lighting of the posed normal (the reference's "
                                   "colours do not change with the head's pose)")
    shading_normals: str = setting("skinned", "the normal that model.shading lights: skinned (the nearest canonical "
                                              "FLAME vertex's, turned by the point's skinning) | flame (the nearest "
                                              "vertex's on FLAME's mesh in the frame, so expressions bend it too)")
    recompute: str = setting("auto", "recompute the point networks' activations in the backward pass: auto (when "
                                     "the step's estimated activations would not fit in the device's free memory) "
                                     "| on (always when training) | off (never)")
    recompute_chunk: int = setting(20000, "points per recomputed chunk (at most one chunk's activations exist)",
                                   AT_LEAST_ONE)
    network_precision: str = setting("float32", "arithmetic of the per-point networks: float32 | bfloat16 (their "
                                                "products, and on a GPU the activations between layers; outputs, "
                                                "parameters and optimizer stay float32; fast.conf's; docs/RECIPES.md)")
    compile: str = setting("off", "compile the per-point networks, the posing and the SSIM loss with torch.compile "
                                  "(dynamic sizes: pruning and growing do not compile again): off | on | auto (on "
                                  "a CUDA device with Triton); docs/PERFORMANCE.md")
    cuda_graphs: bool = setting(True, "pose the frames of a rendering without gradients on a GPU (animation, "
                                      "evaluation, viewer) by replaying a recorded CUDA graph instead of "
                                      "launching its kernels one by one; docs/PERFORMANCE.md")
    training_graphs: bool = setting(True, "replay a training step's per-point work (the networks, the canonical "
                                          "state and the posing), forward and backward, on a GPU from CUDA graphs, "
                                          "recorded again when the points or the frames change; "
                                          "docs/PERFORMANCE.md")
    geometry_network: CanonicalNetworkConf = subsection(CanonicalNetworkConf, "the canonical network: a point's "
                                                        "colour, scale, rotation and opacity")
    gaussian_network: GaussianNetworkConf = subsection(GaussianNetworkConf, "the Gaussian deformation network: "
                                                       "expression-dependent offsets of those")
    deformer_network: DeformerNetworkConf = subsection(DeformerNetworkConf, "the deformer network: a point's "
                                                       "blendshapes, pose correctives and skinning weights")
    point_cloud: PointSchedule = subsection(PointSchedule, "the coarse-to-fine schedule of the points")

    def check(self) -> list[tuple[str, str]]:
        if self.recompute not in ("auto", "on", "off"):
            return [("recompute", f"must be auto, on or off, got {self.recompute!r}")]
        if self.network_precision not in ("float32", "bfloat16"):
            return [("network_precision", f"must be float32 or bfloat16, got {self.network_precision!r}")]
        if self.compile not in COMPILE_MODES:
            return [("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")]
        if self.shading_normals not in SHADING_NORMALS:
            return [("shading_normals", f"must be one of {', '.join(SHADING_NORMALS)}, got {self.shading_normals!r}")]
        return []


# ---- the whole configuration ---------------------------------------------------------------------

SECTIONS: dict[str, type[Section]] = {"train": TrainConf, "loss": LossConf, "dataset": DatasetConf,
                                      "evaluation": EvaluationConf, "model": ModelConf}


@dataclass(frozen=True)
class Conf:
    """A validated configuration: one typed object per section, and the name of its source."""

    train: TrainConf
    loss: LossConf
    dataset: DatasetConf
    evaluation: EvaluationConf
    model: ModelConf
    source: str = field(default="", compare=False)

    @classmethod
    def from_tree(cls, tree: ConfigTree, source: str) -> "Conf":
        sections = {name: section.from_tree(tree[name], name, source) for name, section in SECTIONS.items()}
        return cls(source=source, **sections)
