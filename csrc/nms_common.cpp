#include "nms.h"

#include <torch/library.h>

#include <cmath>
#include <unordered_map>

namespace mrcnn {

void check_nms_arguments(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, double score_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "nms: boxes must have shape [N, 4], got ", boxes.sizes());
  const int64_t n = boxes.size(0);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n,
              "nms: scores must have shape [N] = [", n, "] to match boxes, got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()),
              "nms: boxes must be a floating-point tensor, got ", boxes.scalar_type());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), "nms: scores must have the dtype of "
              "boxes (", boxes.scalar_type(), "), got ", scores.scalar_type());
  TORCH_CHECK(scores.device() == boxes.device(), "nms: scores must be on the device of boxes (",
              boxes.device(), "), got ", scores.device());
  if (idxs.has_value()) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == n,
                "nms: idxs must have shape [N] = [", n, "] to match boxes, got ", idxs->sizes());
    TORCH_CHECK(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false),
                "nms: idxs must be an integer tensor, got ", idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), "nms: idxs must be on the device of boxes (",
                boxes.device(), "), got ", idxs->device());
  }
  // The negated form also rejects NaN.
  TORCH_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0,
              "nms: iou_threshold must be in [0, 1], got ", iou_threshold);
  TORCH_CHECK(!std::isnan(score_threshold), "nms: score_threshold must not be NaN");
}

at::Tensor candidates_by_score(const at::Tensor& scores, double score_threshold) {
  // The threshold is rounded to the scores' dtype first, as TensorFlow compares in that dtype.
  const at::Tensor above =
      at::nonzero(scores.gt(at::scalar_tensor(score_threshold, scores.options()))).squeeze(1);
  // Adding +0 turns -0.0 into +0.0: they are equal scores (ties by index) for TensorFlow's
  // comparisons, but not for the radix sort on CUDA, which orders bit patterns.
  const at::Tensor keys = scores.index_select(0, above).add(0);
  const at::Tensor order =
      std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  return above.index_select(0, order);
}

Groups number_groups(const std::optional<at::Tensor>& values, int64_t num_candidates) {
  if (!values.has_value()) {
    return {std::vector<int64_t>(num_candidates, 0), num_candidates > 0 ? 1 : 0};
  }
  const at::Tensor host = values->to(at::kCPU, at::kLong).contiguous();
  const int64_t* value = host.data_ptr<int64_t>();
  Groups groups{std::vector<int64_t>(host.numel()), 0};
  std::unordered_map<int64_t, int64_t> id_of_value;
  for (int64_t i = 0; i < host.numel(); ++i) {
    const auto inserted = id_of_value.emplace(value[i], groups.count);
    groups.id[i] = inserted.first->second;
    groups.count += inserted.second;
  }
  return groups;
}

#ifdef MRCNN_WITH_CUDA
namespace {

// Checks, then launches: an argument error is raised before any CUDA code runs.
at::Tensor nms_cuda_entry(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, int64_t max_output_size, double score_threshold) {
  check_nms_arguments(boxes, scores, idxs, iou_threshold, score_threshold);
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble ||
                  boxes.scalar_type() == at::kHalf || boxes.scalar_type() == at::kBFloat16,
              "nms: boxes on CUDA must be float32, float64, float16 or bfloat16, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.size(0) <= kMaxCudaBoxes, "nms: at most ", kMaxCudaBoxes,
              " boxes on CUDA, got ", boxes.size(0));
  return nms_cuda(boxes, scores, idxs, iou_threshold, max_output_size, score_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("nms", &nms_cuda_entry);
}
#endif  // MRCNN_WITH_CUDA

}  // namespace mrcnn
