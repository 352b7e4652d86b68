// CPU kernel of mrcnn::nms. Candidates are visited in blocks in score order: each block is first
// tested, in parallel, against the boxes kept before it, then the survivors are settled one by
// one against the boxes kept within the block. This is exactly the greedy pass, with most of
// its IoU work done in vectorised and parallel loops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu_kernels.h"
#include "nms.h"

namespace mrcnn {
namespace {

// Candidates per block, tested in parallel against the boxes kept before the block.
constexpr int64_t kBlockSize = 256;
// IoUs a thread should have to evaluate before it pays to start it: about a millisecond's
// worth. Starting threads costs microseconds on an idle machine but a scheduler time slice
// (milliseconds) when other processes hold the cores, and most candidates stop at their first
// overlap long before the estimate of one IoU per kept box; a lower bar made NMS of 6,000
// boxes 80 times slower with two threads on a busy two-core machine.
constexpr int64_t kMinParallelWork = int64_t{1} << 20;
// Kept boxes tested per step of the early-exit scan; a fixed count the compiler vectorises. The
// exit test waits for the chunk's IoU divisions, so long chunks test more boxes per wait: 128
// made NMS of 1,000 to 12,000 boxes 1.3-1.8x faster than 16 with AVX-512.
constexpr int64_t kScanChunk = 128;

// Boxes in structure-of-arrays layout, so that loops over them vectorise.
template <typename T>
struct BoxColumns {
  std::vector<T> ymin, xmin, ymax, xmax, area;

  void push_back(const NormalizedBox<T>& box) {
    ymin.push_back(box.ymin);
    xmin.push_back(box.xmin);
    ymax.push_back(box.ymax);
    xmax.push_back(box.xmax);
    area.push_back(box.area);
  }
  NormalizedBox<T> operator[](int64_t k) const {
    return {ymin[k], xmin[k], ymax[k], xmax[k], area[k]};
  }
  int64_t size() const { return static_cast<int64_t>(area.size()); }
};

// The candidates' boxes in score order, read through `order` rather than gathered into a sorted
// copy first: a gather of a large [N, 4] tensor would be a parallel op of its own.
template <typename T>
BoxColumns<T> normalized_columns(const at::Tensor& boxes /* [N, 4] contiguous */,
                                 const at::Tensor& order /* [K] int64 */) {
  const T* corners = boxes.const_data_ptr<T>();
  const int64_t* index = order.const_data_ptr<int64_t>();
  BoxColumns<T> columns;
  for (int64_t k = 0; k < order.numel(); ++k) {
    const T* corner = corners + 4 * index[k];
    columns.push_back(normalize_box(corner[0], corner[1], corner[2], corner[3]));
  }
  return columns;
}

// Whether `box` overlaps any of the boxes [first, last) of `kept` by more than `threshold`. The
// latest kept boxes are tested first, as a box's suppressor tends to have a similar score
// (TensorFlow scans in the same order), and the scan stops after the first chunk with a hit. The
// chunk's loop vectorises; run() is compiled for each instruction set (simd::best).
struct OverlapsAny {
  template <int Bytes, typename T>
  MRCNN_ALWAYS_INLINE bool run(const NormalizedBox<T>* box, const BoxColumns<T>* kept,
                               int64_t first, int64_t last, T threshold) const {
    const T* ymin = kept->ymin.data();
    const T* xmin = kept->xmin.data();
    const T* ymax = kept->ymax.data();
    const T* xmax = kept->xmax.data();
    const T* area = kept->area.data();
    for (int64_t end = last; end > first; end -= kScanChunk) {
      int hit = 0;  // an int, not a bool, or GCC does not vectorise the loop
      for (int64_t k = std::max(end - kScanChunk, first); k < end; ++k) {
        hit |= overlaps_above(*box, NormalizedBox<T>{ymin[k], xmin[k], ymax[k], xmax[k], area[k]},
                              threshold);
      }
      if (hit) {
        return true;
      }
    }
    return false;
  }
};

// Greedy NMS over `boxes` sorted by descending score. Returns the positions of the kept boxes
// in selection order, at most `max_per_group` per group (no limit when negative).
template <typename T>
std::vector<int64_t> greedy_nms(
    const BoxColumns<T>& boxes, const Groups& groups, T threshold, int64_t max_per_group) {
  const int64_t n = boxes.size();
  const int64_t cap = max_per_group < 0 ? n : max_per_group;
  std::vector<BoxColumns<T>> kept(groups.count);
  int64_t full_groups = cap == 0 ? groups.count : 0;
  std::vector<int64_t> selected;
  // Per candidate of the block: how many kept boxes of its group it has been tested against,
  // and whether one of them suppresses it.
  std::vector<int64_t> tested(kBlockSize);
  std::vector<char> suppressed(kBlockSize);
  const auto overlaps_any = simd::best<OverlapsAny, const NormalizedBox<T>*,
                                       const BoxColumns<T>*, int64_t, int64_t, T>();
  const OverlapsAny scan;
  for (int64_t begin = 0; begin < n && full_groups < groups.count; begin += kBlockSize) {
    const int64_t end = std::min<int64_t>(begin + kBlockSize, n);
    // Against the boxes kept before the block: independent per candidate, hence parallel.
    const int64_t grain = std::max<int64_t>(1, kMinParallelWork / (1 + selected.size()));
    at::parallel_for(begin, end, grain, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const BoxColumns<T>& rivals = kept[groups.id[i]];
        tested[i - begin] = rivals.size();
        const NormalizedBox<T> box = boxes[i];
        suppressed[i - begin] =
            rivals.size() >= cap || overlaps_any(scan, &box, &rivals, 0, rivals.size(), threshold);
      }
    });
    // Against the boxes kept within the block, in score order.
    for (int64_t i = begin; i < end; ++i) {
      BoxColumns<T>& rivals = kept[groups.id[i]];
      const NormalizedBox<T> box = boxes[i];
      if (suppressed[i - begin] || rivals.size() >= cap ||
          overlaps_any(scan, &box, &rivals, tested[i - begin], rivals.size(), threshold)) {
        continue;
      }
      selected.push_back(i);
      rivals.push_back(boxes[i]);
      full_groups += rivals.size() == cap;
    }
  }
  return selected;
}

at::Tensor nms_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
    double iou_threshold, int64_t max_output_size, double score_threshold) {
  check_nms_arguments(boxes, scores, idxs, iou_threshold, score_threshold);
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
              "nms: boxes on the CPU must be float32 or float64, got ", boxes.scalar_type());
  const at::Tensor order = candidates_by_score(scores, score_threshold);
  const Groups groups = number_groups(
      idxs.has_value() ? std::optional<at::Tensor>(idxs->index_select(0, order)) : std::nullopt,
      order.numel());
  const at::Tensor corners = boxes.contiguous();
  std::vector<int64_t> selected;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    selected = greedy_nms(normalized_columns<scalar_t>(corners, order), groups,
                          static_cast<scalar_t>(iou_threshold), max_output_size);
  });
  const at::Tensor positions = at::empty({static_cast<int64_t>(selected.size())}, at::kLong);
  std::copy(selected.begin(), selected.end(), positions.data_ptr<int64_t>());
  return order.index_select(0, positions);
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("nms", &nms_cpu);
}

}  // namespace mrcnn
