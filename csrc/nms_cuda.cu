// CUDA kernel of mrcnn::nms, the bitmask algorithm: after a stable sort by score, one kernel
// records for every pair of candidates (i, j > i) whether i would suppress j, as one bit in
// 64-bit words; the greedy pass then reads the mask on the host after a single copy. The launcher
// runs after the entry point's checks (nms_common.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nms.h"

namespace mrcnn {
namespace {

// Boxes per mask word, and threads per block of the mask kernel.
constexpr int kWordBits = 64;
// The grid has a row per word of a mask row, at most 65535 (gridDim.y), hence kMaxCudaBoxes.
static_assert(kMaxCudaBoxes <= kWordBits * int64_t{65535}, "the grid would be too tall");

// mask[i][w] bit b: candidate i (sorted order) has IoU > threshold with candidate
// j = 64 * w + b > i in its group. Block (x, y) fills word x of the 64 rows of word-block y;
// words left of the diagonal are never written nor read.
template <typename T>
__global__ void suppression_mask_kernel(
    int64_t num_boxes, const T* __restrict__ boxes, const int64_t* __restrict__ groups,
    T threshold, int64_t words_per_row, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) {
    return;
  }
  const int64_t row_count = min_of(num_boxes - row_block * kWordBits, int64_t{kWordBits});
  const int64_t col_count = min_of(num_boxes - col_block * kWordBits, int64_t{kWordBits});

  __shared__ NormalizedBox<T> col_boxes[kWordBits];
  __shared__ int64_t col_groups[kWordBits];
  if (threadIdx.x < col_count) {
    const T* corner = boxes + (col_block * kWordBits + threadIdx.x) * 4;
    col_boxes[threadIdx.x] = normalize_box(corner[0], corner[1], corner[2], corner[3]);
    col_groups[threadIdx.x] = groups == nullptr ? 0 : groups[col_block * kWordBits + threadIdx.x];
  }
  __syncthreads();

  if (threadIdx.x < row_count) {
    const int64_t row = row_block * kWordBits + threadIdx.x;
    const T* corner = boxes + row * 4;
    const NormalizedBox<T> box = normalize_box(corner[0], corner[1], corner[2], corner[3]);
    const int64_t group = groups == nullptr ? 0 : groups[row];
    unsigned long long bits = 0;
    for (int64_t j = row_block == col_block ? threadIdx.x + 1 : 0; j < col_count; ++j) {
      if (col_groups[j] == group && overlaps_above(box, col_boxes[j], threshold)) {
        bits |= 1ULL << j;
      }
    }
    mask[row * words_per_row + col_block] = bits;
  }
}

// The greedy pass over the mask: positions of the kept candidates in selection order, at most
// `max_per_group` per group (no limit when negative).
std::vector<int64_t> select_from_mask(
    const unsigned long long* mask, int64_t words_per_row, const Groups& groups,
    int64_t max_per_group) {
  const int64_t n = static_cast<int64_t>(groups.id.size());
  const int64_t cap = max_per_group < 0 ? n : max_per_group;
  std::vector<unsigned long long> suppressed(words_per_row, 0);
  std::vector<int64_t> kept_count(groups.count, 0);
  int64_t full_groups = cap == 0 ? groups.count : 0;
  std::vector<int64_t> selected;
  for (int64_t i = 0; i < n && full_groups < groups.count; ++i) {
    const int64_t word = i / kWordBits;
    const int64_t group = groups.id[i];
    if (((suppressed[word] >> (i % kWordBits)) & 1) || kept_count[group] >= cap) {
      continue;
    }
    selected.push_back(i);
    full_groups += ++kept_count[group] == cap;
    const unsigned long long* row = mask + i * words_per_row;
    for (int64_t w = word; w < words_per_row; ++w) {
      suppressed[w] |= row[w];
    }
  }
  return selected;
}

}  // namespace

at::Tensor nms_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, int64_t max_output_size, double score_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const at::Tensor order = candidates_by_score(scores, score_threshold);
  const int64_t n = order.numel();
  if (n == 0) {
    return order;
  }
  const int64_t words_per_row = (n + kWordBits - 1) / kWordBits;

  // float16 and bfloat16 boxes are computed in float32.
  const at::ScalarType compute_type =
      boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor sorted_boxes = boxes.index_select(0, order).to(compute_type).contiguous();
  const std::optional<at::Tensor> sorted_groups =
      idxs.has_value() ? std::optional<at::Tensor>(idxs->index_select(0, order).to(at::kLong))
                       : std::nullopt;
  const at::Tensor mask = at::empty({n, words_per_row}, boxes.options().dtype(at::kLong));

  const dim3 grid(words_per_row, words_per_row);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute_type, "nms_cuda", [&] {
    suppression_mask_kernel<scalar_t><<<grid, kWordBits, 0, stream>>>(
        n, sorted_boxes.data_ptr<scalar_t>(),
        sorted_groups.has_value() ? sorted_groups->data_ptr<int64_t>() : nullptr,
        static_cast<scalar_t>(iou_threshold), words_per_row,
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // A blocking copy on the current stream, so the kernel has finished before the host reads.
  const at::Tensor host_mask = mask.to(at::kCPU);
  const std::vector<int64_t> selected = select_from_mask(
      reinterpret_cast<const unsigned long long*>(host_mask.data_ptr<int64_t>()), words_per_row,
      number_groups(sorted_groups, n), max_output_size);
  const at::Tensor positions = at::empty({static_cast<int64_t>(selected.size())}, at::kLong);
  std::copy(selected.begin(), selected.end(), positions.data_ptr<int64_t>());
  return order.index_select(0, positions.to(boxes.device()));
}

}  // namespace mrcnn
