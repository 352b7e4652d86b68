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

// Checks the arguments the forward and backward ops share, and returns boxes and box_ind ready
// for the kernels. `data` is the image (forward) or the output gradient (backward).
struct KernelBoxes {
  at::Tensor boxes;    // [K, 4] contiguous, in the compute type (float64 for float64 data)
  at::Tensor box_ind;  // [K] contiguous int64
};

inline KernelBoxes check_boxes(
    const char* op, const char* data_name, const at::Tensor& data, const at::Tensor& boxes,
    const at::Tensor& box_ind, int64_t batch, int64_t height, int64_t width) {
  const at::ScalarType dtype = data.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": ", data_name, " must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(height > 0 && width > 0, op, ": the image height and width must be positive, got ",
              height, " x ", width);
  // Pixel indices come from float coordinates, exact only up to 2^24.
  constexpr int64_t max_float_size = int64_t{1} << 24;
  TORCH_CHECK(dtype == at::kDouble || (height <= max_float_size && width <= max_float_size), op,
              ": the image height and width must be at most 2^24 for ", dtype, " images, got ",
              height, " x ", width);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be a [K, 4] tensor, got ",
              boxes.sizes());
  const int64_t num_boxes = boxes.size(0);
  TORCH_CHECK(box_ind.dim() == 1 && box_ind.size(0) == num_boxes, op,
              ": box_ind must be a [K] tensor with K = ", num_boxes, " (the rows of boxes), got ",
              box_ind.sizes());
  TORCH_CHECK(box_ind.scalar_type() == at::kInt || box_ind.scalar_type() == at::kLong, op,
              ": box_ind must be int32 or int64, got ", box_ind.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat ||
                  (boxes.scalar_type() == at::kDouble && dtype == at::kDouble),
              op, ": boxes must be float32 (or float64 with a float64 ", data_name, "), got ",
              boxes.scalar_type(), " boxes with a ", dtype, " ", data_name);
  TORCH_CHECK(boxes.device() == data.device() && box_ind.device() == data.device(), op, ": ",
              data_name, ", boxes and box_ind must be on the same device, got ", data.device(),
              ", ", boxes.device(), " and ", box_ind.device());
  if (num_boxes > 0) {
    // One host sync on CUDA: an index out of range would read or write outside the image.
    const auto [min_ind, max_ind] = at::aminmax(box_ind);
    const at::Tensor range = at::stack({min_ind, max_ind}).cpu();
    const int64_t lowest = range[0].item<int64_t>();
    const int64_t highest = range[1].item<int64_t>();
    TORCH_CHECK(lowest >= 0 && highest < batch, op, ": box_ind must be in [0, ", batch,
                ") (the images in the batch), got values from ", lowest, " to ", highest);
  }
  const at::ScalarType coord_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  return {boxes.to(coord_dtype).contiguous(), box_ind.to(at::kLong).contiguous()};
}

// Checks the forward's arguments; returns boxes and box_ind ready for the kernels.
inline KernelBoxes check_forward_args(
    const at::Tensor& image, const at::Tensor& boxes, const at::Tensor& box_ind,
    int64_t crop_height, int64_t crop_width) {
  constexpr const char* op = "crop_and_resize";
  TORCH_CHECK(image.dim() == 4, op, ": image must be a 4-D [N, C, H, W] tensor, got shape ",
              image.sizes());
  TORCH_CHECK(crop_height > 0 && crop_width > 0, op, ": crop size must be positive, got ",
              crop_height, " x ", crop_width);
  return check_boxes(op, "image", image, boxes, box_ind, image.size(0), image.size(2),
                     image.size(3));
}

// Checks the backward's arguments; returns boxes and box_ind ready for the kernels.
inline KernelBoxes check_backward_args(
    const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& box_ind, int64_t batch,
    int64_t channels, int64_t height, int64_t width) {
  constexpr const char* op = "crop_and_resize_backward";
  TORCH_CHECK(batch >= 0 && channels >= 0, op, ": batch and channels must be non-negative, got ",
              batch, " and ", channels);
  KernelBoxes kernel_boxes = check_boxes(op, "grad", grad, boxes, box_ind, batch, height, width);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == boxes.size(0) && grad.size(1) == channels, op,
              ": grad must be a [K, C, crop_height, crop_width] tensor with K = ", boxes.size(0),
              " and C = ", channels, ", got shape ", grad.sizes());
  TORCH_CHECK(grad.size(2) > 0 && grad.size(3) > 0, op, ": crop size must be positive, got ",
              grad.size(2), " x ", grad.size(3));
  return kernel_boxes;
}

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
