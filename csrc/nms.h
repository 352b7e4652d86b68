// Parts of the NMS operator shared by the CPU and CUDA kernels: argument checks, candidate
// ordering, group numbering and the IoU test. Both kernels evaluate the same IoU expression
// through `overlaps_above`, so they select the same boxes bit for bit.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace mrcnn {

// Correctly rounded arithmetic. nvcc would otherwise contract a*b+c into one FMA, whose single
// rounding changes IoU values near the threshold relative to the CPU and to TensorFlow. Host
// code is built with -ffp-contract=off (setup.py) for the same reason.
#if defined(__CUDA_ARCH__)
C10_DEVICE inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
C10_DEVICE inline float sub_rn(float a, float b) { return __fsub_rn(a, b); }
C10_DEVICE inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
C10_DEVICE inline float div_rn(float a, float b) { return __fdiv_rn(a, b); }
C10_DEVICE inline double add_rn(double a, double b) { return __dadd_rn(a, b); }
C10_DEVICE inline double sub_rn(double a, double b) { return __dsub_rn(a, b); }
C10_DEVICE inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
C10_DEVICE inline double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
template <typename T> inline T add_rn(T a, T b) { return a + b; }
template <typename T> inline T sub_rn(T a, T b) { return a - b; }
template <typename T> inline T mul_rn(T a, T b) { return a * b; }
template <typename T> inline T div_rn(T a, T b) { return a / b; }
#endif

// std::min / std::max (what TensorFlow uses), written out so both devices treat NaN alike.
template <typename T>
C10_HOST_DEVICE inline T min_of(T a, T b) { return b < a ? b : a; }
template <typename T>
C10_HOST_DEVICE inline T max_of(T a, T b) { return a < b ? b : a; }

// A box with its corners in min/max order, and its area.
template <typename T>
struct NormalizedBox {
  T ymin, xmin, ymax, xmax, area;
};

// Boxes may come with their corners in either order, as tf.image.non_max_suppression allows.
template <typename T>
C10_HOST_DEVICE inline NormalizedBox<T> normalize_box(T y1, T x1, T y2, T x2) {
  const T ymin = min_of(y1, y2), xmin = min_of(x1, x2);
  const T ymax = max_of(y1, y2), xmax = max_of(x1, x2);
  return {ymin, xmin, ymax, xmax, mul_rn(sub_rn(ymax, ymin), sub_rn(xmax, xmin))};
}

// Whether the IoU of `a` and `b` exceeds `threshold` (>= 0). As in TensorFlow the IoU counts as 0
// when either area is <= 0, so such boxes never suppress and are never suppressed, and boxes
// with NaN coordinates (NaN or zero area) never take part either.
template <typename T>
C10_HOST_DEVICE inline bool overlaps_above(
    const NormalizedBox<T>& a, const NormalizedBox<T>& b, T threshold) {
  const T height = max_of(sub_rn(min_of(a.ymax, b.ymax), max_of(a.ymin, b.ymin)), T(0));
  const T width = max_of(sub_rn(min_of(a.xmax, b.xmax), max_of(a.xmin, b.xmin)), T(0));
  const T intersection = mul_rn(height, width);
  const T iou = div_rn(intersection, sub_rn(add_rn(a.area, b.area), intersection));
  // Bitwise & rather than && keeps the test branch-free, so the CPU loops vectorise.
  return (a.area > T(0)) & (b.area > T(0)) & (iou > threshold);
}

// Checks what both kernels require of the arguments of mrcnn::nms, before anything is allocated
// or read; the CPU entry point then narrows the dtypes (nms_cpu.cpp), the CUDA one the dtypes and
// the box count (nms_common.cpp).
void check_nms_arguments(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, double score_threshold);

// The most boxes the CUDA kernel takes (its suppression mask has a grid row per 64 boxes).
constexpr int64_t kMaxCudaBoxes = int64_t{64} * 65535;

// The CUDA launcher (nms_cuda.cu), called by the CUDA entry point after the checks.
at::Tensor nms_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, int64_t max_output_size, double score_threshold);

// Indices [K] (int64) of the boxes with score > score_threshold, by descending score; equal
// scores keep ascending index order. NaN scores never pass the threshold.
at::Tensor candidates_by_score(const at::Tensor& scores, double score_threshold);

// Group of every candidate numbered 0, 1, ... in order of first appearance.
struct Groups {
  std::vector<int64_t> id;
  int64_t count;
};

// `values`: the idxs of the candidates in any integer dtype and on any device, or nullopt for
// plain NMS, where all `num_candidates` candidates form one group.
Groups number_groups(const std::optional<at::Tensor>& values, int64_t num_candidates);

}  // namespace mrcnn
