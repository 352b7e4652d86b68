// The argument checks of mrcnn::roi_align and its backward, and the CUDA entry points.
//
// As for crop_and_resize (see crop_and_resize_common.cpp): one definition of the checks for both
// devices, compiled and tested by every build; the CUDA entry points check, then launch.
#include <torch/library.h>

#include "roi_align_common.h"

namespace mrcnn {
namespace roi_align {
namespace {

void check_dtype(const at::Tensor& tensor, const char* name) {
  const at::ScalarType dtype = tensor.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "roi_align: ", name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

void check_rois(const at::Tensor& rois, const at::Tensor& other, const char* other_name,
                int64_t batch) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "roi_align: rois must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), got shape ",
              rois.sizes());
  TORCH_CHECK(rois.is_floating_point(), "roi_align: rois must be a floating-point tensor, got ",
              rois.scalar_type());
  TORCH_CHECK(rois.device() == other.device(), "roi_align: ", other_name,
              " and rois must be on the same device, got ", other.device(), " and ",
              rois.device());
  const at::Tensor index = rois.select(1, 0);
  // NaN indices fail both comparisons and are rejected too. On CUDA this syncs with the host,
  // the price of never reading outside the input.
  const at::Tensor valid = index.ge(0).logical_and(index.lt(batch));
  TORCH_CHECK(valid.all().item<bool>(), "roi_align: rois[:, 0] must hold batch indices in [0, ",
              batch, "), got ", index.masked_select(valid.logical_not())[0].item<double>());
}

void check_pooled_size(int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "roi_align: output size must be positive, got (", pooled_height, ", ", pooled_width,
              ")");
}

}  // namespace

void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                        int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be a 4-D tensor [N, C, H, W], got shape ",
              input.sizes());
  check_dtype(input, "input");
  check_pooled_size(pooled_height, pooled_width);
  check_rois(rois, input, "input", input.size(0));
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                         int64_t pooled_width, int64_t batch, int64_t channels, int64_t height,
                         int64_t width) {
  check_dtype(grad, "grad");
  check_pooled_size(pooled_height, pooled_width);
  TORCH_CHECK(batch >= 0 && channels >= 0 && height >= 0 && width >= 0,
              "roi_align_backward: the input shape must be non-negative, got [", batch, ", ",
              channels, ", ", height, ", ", width, "]");
  check_rois(rois, grad, "grad", batch);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "roi_align_backward: grad must have shape [K, C, pooled_height, pooled_width] = [",
              rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width, "], got ",
              grad.sizes());
}

#ifdef MRCNN_WITH_CUDA
namespace {

at::Tensor roi_align_cuda_entry(const at::Tensor& input, const at::Tensor& rois,
                                double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                int64_t sampling_ratio, bool aligned) {
  check_forward_args(input, rois, pooled_height, pooled_width);
  return roi_align_forward_cuda(input, rois, spatial_scale, pooled_height, pooled_width,
                                sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda_entry(const at::Tensor& grad, const at::Tensor& rois,
                                         double spatial_scale, int64_t pooled_height,
                                         int64_t pooled_width, int64_t batch, int64_t channels,
                                         int64_t height, int64_t width, int64_t sampling_ratio,
                                         bool aligned) {
  check_backward_args(grad, rois, pooled_height, pooled_width, batch, channels, height, width);
  return roi_align_backward_cuda(grad, rois, spatial_scale, pooled_height, pooled_width, batch,
                                 channels, height, width, sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda_entry);
  m.impl("roi_align_backward", &roi_align_backward_cuda_entry);
}
#endif  // MRCNN_WITH_CUDA

}  // namespace roi_align
}  // namespace mrcnn
