// The argument checks of mrcnn::crop_and_resize and its backward, and the CUDA entry points.
//
// The checks live in this host-compiled file, not in the headers, so that one definition serves
// both devices and every build (CPU-only ones included) compiles and tests it. The CUDA entry
// points are here too: they check, then call the launchers of crop_and_resize_cuda.cu, so an
// argument error is raised before any CUDA code runs.
#include <torch/library.h>

#include "crop_and_resize.h"

namespace mrcnn {
namespace crop_and_resize {
namespace {

// The checks the forward and backward share; `data` is the image (forward) or the output
// gradient (backward).
KernelBoxes check_boxes(const char* op, const char* data_name, const at::Tensor& data,
                        const at::Tensor& boxes, const at::Tensor& box_ind, int64_t batch,
                        int64_t height, int64_t width) {
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

}  // namespace

KernelBoxes check_forward_args(const at::Tensor& image, const at::Tensor& boxes,
                               const at::Tensor& box_ind, int64_t crop_height,
                               int64_t crop_width) {
  constexpr const char* op = "crop_and_resize";
  TORCH_CHECK(image.dim() == 4, op, ": image must be a 4-D [N, C, H, W] tensor, got shape ",
              image.sizes());
  TORCH_CHECK(crop_height > 0 && crop_width > 0, op, ": crop size must be positive, got ",
              crop_height, " x ", crop_width);
  return check_boxes(op, "image", image, boxes, box_ind, image.size(0), image.size(2),
                     image.size(3));
}

KernelBoxes check_backward_args(const at::Tensor& grad, const at::Tensor& boxes,
                                const at::Tensor& box_ind, int64_t batch, int64_t channels,
                                int64_t height, int64_t width) {
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

#ifdef MRCNN_WITH_CUDA
namespace {

at::Tensor crop_and_resize_cuda_entry(const at::Tensor& image, const at::Tensor& boxes,
                                      const at::Tensor& box_ind, int64_t crop_height,
                                      int64_t crop_width, double extrapolation_value) {
  const KernelBoxes kernel_boxes =
      check_forward_args(image, boxes, box_ind, crop_height, crop_width);
  return crop_and_resize_cuda(image, kernel_boxes, crop_height, crop_width, extrapolation_value);
}

at::Tensor crop_and_resize_backward_cuda_entry(const at::Tensor& grad, const at::Tensor& boxes,
                                               const at::Tensor& box_ind, int64_t batch,
                                               int64_t channels, int64_t height, int64_t width) {
  const KernelBoxes kernel_boxes =
      check_backward_args(grad, boxes, box_ind, batch, channels, height, width);
  return crop_and_resize_backward_cuda(grad, kernel_boxes, batch, channels, height, width);
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("crop_and_resize", &crop_and_resize_cuda_entry);
  m.impl("crop_and_resize_backward", &crop_and_resize_backward_cuda_entry);
}
#endif  // MRCNN_WITH_CUDA

}  // namespace crop_and_resize
}  // namespace mrcnn
