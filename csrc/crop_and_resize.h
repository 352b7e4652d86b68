// tf.image.crop_and_resize (bilinear) in NCHW: the sampling arithmetic shared by the CPU and CUDA
// kernels, and the argument checks shared by their entry points.
//
// The result must equal TensorFlow's CPU kernel bit for bit, so every float operation is rounded
// on its own, in TF's order. On the GPU the *_rn intrinsics stop nvcc from contracting a*b+c into
// a fused multiply-add; host code is built with -ffp-contract=off (setup.py) for the same reason.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/macros/Macros.h>

#include <array>
#include <cmath>
#include <cstdint>

namespace mrcnn {
namespace crop_and_resize {

C10_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

C10_HOST_DEVICE inline double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

C10_HOST_DEVICE inline float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

C10_HOST_DEVICE inline double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

C10_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// One output sample along one axis: it blends pixels `low` and `high` with weight `lerp` on
// `high`, or, when `inside` is false, takes extrapolation_value and passes no gradient.
template <typename T>
struct AxisSample {
  bool inside;
  int64_t low;
  int64_t high;
  T lerp;
};

// Sample `index` of `crop_size` along an axis of `size` pixels, for a box running from `start` to
// `end` (normalised: 0 and 1 are the centres of the first and last pixels; start > end samples
// backwards). T is the compute type, float or double.
template <typename T>
C10_HOST_DEVICE inline AxisSample<T> axis_sample(
    T start, T end, int64_t index, int64_t crop_size, int64_t size) {
  const T last = static_cast<T>(size - 1);
  T position;
  if (crop_size > 1) {
    const T step = mul_rn(sub_rn(end, start), last) / static_cast<T>(crop_size - 1);
    position = add_rn(mul_rn(start, last), mul_rn(static_cast<T>(index), step));
  } else {
    // TF writes 0.5 * (start + end) * (size - 1): a double product of the T sum, rounded to T.
    position = static_cast<T>(
        mul_rn(mul_rn(0.5, static_cast<double>(add_rn(start, end))), static_cast<double>(last)));
  }
  // Written so that NaN (from non-finite boxes) is outside too, never a pixel index.
  if (!(position >= 0 && position <= last)) {
    return {false, 0, 0, T(0)};
  }
  const T low = std::floor(position);
  return {true, static_cast<int64_t>(low), static_cast<int64_t>(std::ceil(position)),
          sub_rn(position, low)};
}

// An output sample of a crop: the four corner pixels as offsets into a plane of `width` columns
// (top-left, top-right, bottom-left, bottom-right) and the interpolation weights. A box
// (y1, x1, y2, x2) samples rows with axis_sample(y1, y2, ...) and columns with
// axis_sample(x1, x2, ...).
template <typename T>
struct BilinearSample {
  bool inside;
  int64_t corner[4];
  T y_lerp;
  T x_lerp;
};

template <typename T>
C10_HOST_DEVICE inline BilinearSample<T> bilinear_sample(
    const AxisSample<T>& row, const AxisSample<T>& col, int64_t width) {
  return {row.inside && col.inside,
          {row.low * width + col.low, row.low * width + col.high, row.high * width + col.low,
           row.high * width + col.high},
          row.lerp,
          col.lerp};
}

// TF's interpolation expression for the four corner values of a sample.
template <typename T>
C10_HOST_DEVICE inline T blend(T top_left, T top_right, T bottom_left, T bottom_right, T x_lerp,
                               T y_lerp) {
  const T top = add_rn(top_left, mul_rn(sub_rn(top_right, top_left), x_lerp));
  const T bottom = add_rn(bottom_left, mul_rn(sub_rn(bottom_right, bottom_left), x_lerp));
  return add_rn(top, mul_rn(sub_rn(bottom, top), y_lerp));
}

// A sample of `plane`, read through T (float for float16/bfloat16 planes).
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline T interpolate(const scalar_t* plane, const BilinearSample<T>& sample) {
  return blend(static_cast<T>(plane[sample.corner[0]]), static_cast<T>(plane[sample.corner[1]]),
               static_cast<T>(plane[sample.corner[2]]), static_cast<T>(plane[sample.corner[3]]),
               sample.x_lerp, sample.y_lerp);
}

// The shares of an output gradient that go to the four corners, in TF's
// CropAndResizeGradImage arithmetic (same corner order as BilinearSample::corner).
template <typename T>
struct CornerGradients {
  T share[4];
};

template <typename T>
C10_HOST_DEVICE inline CornerGradients<T> corner_gradients(T grad, T y_lerp, T x_lerp) {
  const T top = mul_rn(sub_rn(T(1), y_lerp), grad);
  const T bottom = mul_rn(y_lerp, grad);
  const T left = sub_rn(T(1), x_lerp);
  const T right = x_lerp;
  return {{mul_rn(left, top), mul_rn(right, top), mul_rn(left, bottom), mul_rn(right, bottom)}};
}

template <typename T>
C10_HOST_DEVICE inline CornerGradients<T> corner_gradients(
    T grad, const BilinearSample<T>& sample) {
  return corner_gradients(grad, sample.y_lerp, sample.x_lerp);
}

// Boxes and box_ind as the kernels read them, after the entry point's checks.
struct KernelBoxes {
  at::Tensor boxes;    // [K, 4] contiguous, in the compute type (float64 for float64 data)
  at::Tensor box_ind;  // [K] contiguous int64
};

// The argument checks of both devices (crop_and_resize_common.cpp): every entry point runs them
// before it allocates or reads anything, so a bad argument is an exception with the same message
// on the CPU and on CUDA, never an out-of-range access. They return boxes and box_ind ready for
// the kernels.
KernelBoxes check_forward_args(const at::Tensor& image, const at::Tensor& boxes,
                               const at::Tensor& box_ind, int64_t crop_height,
                               int64_t crop_width);
KernelBoxes check_backward_args(const at::Tensor& grad, const at::Tensor& boxes,
                                const at::Tensor& box_ind, int64_t batch, int64_t channels,
                                int64_t height, int64_t width);

// The CUDA kernels' launchers (crop_and_resize_cuda.cu), called by the CUDA entry points after
// the checks.
at::Tensor crop_and_resize_cuda(const at::Tensor& image, const KernelBoxes& kernel_boxes,
                                int64_t crop_height, int64_t crop_width,
                                double extrapolation_value);
at::Tensor crop_and_resize_backward_cuda(const at::Tensor& grad, const KernelBoxes& kernel_boxes,
                                         int64_t batch, int64_t channels, int64_t height,
                                         int64_t width);

// Checks `out`, the tensor crop_and_resize.out writes the crops of `image` into.
inline void check_out(const at::Tensor& image, int64_t num_boxes, int64_t crop_height,
                      int64_t crop_width, const at::Tensor& out) {
  constexpr const char* op = "crop_and_resize";
  const std::array<int64_t, 4> shape{num_boxes, image.size(1), crop_height, crop_width};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(shape), op,
              ": out must be a [K, C, crop_height, crop_width] = ", at::IntArrayRef(shape),
              " tensor, got shape ", out.sizes());
  TORCH_CHECK(out.scalar_type() == image.scalar_type() && out.device() == image.device(), op,
              ": out must have the image's dtype and device (", image.scalar_type(), " on ",
              image.device(), "), got ", out.scalar_type(), " on ", out.device());
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, image);
}

}  // namespace crop_and_resize
}  // namespace mrcnn
