//===- cudnn_attention.cu - attention on cuDNN's fused kernels ------------===//
//
// The forward graph is cuDNN's flash-attention pattern: S = Q K^T, scaled,
// masked (causal, then the sliding window's left edge), softmax with its
// log-sum-exp written out as statistics, then P V. The backward graph is the
// matching pattern: D = rowsum(dO * O), P rebuilt from the statistics, dV =
// P^T dO, dS = P (dO V^T - D) scale, dK = dS^T Q, dQ = dS K through an fp32
// accumulator; with GQA the per-query-head dK and dV are summed per kv head
// inside the graph. cuDNN picks the fused engine; plans are built once per
// shape and kept.
//
// Segment ids: cuDNN sees one causal sequence per batch row, so a call is
// served only when every row is a single document (one non-zero id) followed
// by padding (id 0), which is checked on the device and read back. Padded
// query rows see no key in g3moe's semantics: their outputs are zeroed after
// the forward, and their incoming gradients are zeroed before the backward,
// which makes their dq and every padded key's dk and dv zero as well; the
// rows of the document are untouched by padding because attention is causal.
//
// The forward writes the statistics into its `lse` output when the step asks
// for it (padded rows 0, as on the CPU). attention_grad starts from the
// forward's saved output and statistics when the step hands them over
// (--g3moe-save-attention-stats; padded rows' statistics become +inf, so that
// their probabilities, whose gradients are zero, stay finite); without them
// it reruns the forward (about a third of the backward's cost) into scratch
// memory first.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cudnn_attention.h"

#include "runtime/cuda/cudnn_graph.h"
#include "runtime/kernels/scratch_bounds.h"

#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace g3rt::cuda {

using namespace checks;
using cudnn::GraphBuilder;
using cudnn::Plan;
using cudnn::TensorId;

namespace {

// Unique ids of the tensors bound at execution time.
enum : TensorId {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kScale,
  kNegInf,
  kWindow,
  kDO,
  kDQ,
  kDK,
  kDV,
  kSoftmaxSum,
  kDQAccum,
  kOne,
};

struct PlanKey {
  int64_t B, T, nh, nkv, d, window;
  bool grad;
  bool operator<(const PlanKey &o) const {
    return std::tie(B, T, nh, nkv, d, window, grad) <
           std::tie(o.B, o.T, o.nh, o.nkv, o.d, o.window, o.grad);
  }
};

} // namespace

struct CudnnAttentionState {
  cudnnHandle_t handle = nullptr;
  /// Per shape: the plan, or (plan.plan null) why cuDNN offers none.
  std::map<PlanKey, std::pair<Plan, std::string>> plans;
  void *scratch = nullptr;
  size_t scratchBytes = 0;
  int32_t *rows = nullptr; // per batch row: document length, then "is one document"
  int64_t rowsCapacity = 0;

  ~CudnnAttentionState() {
    cudaFree(scratch);
    cudaFree(rows);
    if (handle)
      cudnnDestroy(handle);
  }
};

namespace {

//===----------------------------------------------------------------------===//
// Graphs
//===----------------------------------------------------------------------===//

using Dims = std::vector<int64_t>;

struct Layout {
  int64_t B, T, H, Hk, D;
  // [B, T, heads, D] memory seen as [B, heads, T, D].
  Dims bhtd(int64_t heads) const { return {B, heads, T, D}; }
  Dims bhtdStrides(int64_t heads) const { return {T * heads * D, D, heads * D, 1}; }
  // The same memory seen transposed, [B, heads, D, T].
  Dims bhdt(int64_t heads) const { return {B, heads, D, T}; }
  Dims bhdtStrides(int64_t heads) const { return {T * heads * D, D, 1, heads * D}; }
  Dims scores() const { return {B, H, T, T}; }
  Dims scoreStrides() const { return {H * T * T, T * T, T, 1}; }
  Dims scoresTransposed() const { return {H * T * T, T * T, 1, T}; }
  Dims rows() const { return {B, H, T, 1}; }
  Dims rowStrides() const { return {H * T, T, 1, 1}; }
  Dims packed() const { return {B, H, T, D}; }
  Dims packedStrides() const { return {H * T * D, T * D, D, 1}; }
};

TensorId scoreTensor(GraphBuilder &g, const Layout &l, cudnnDataType_t t = CUDNN_DATA_FLOAT) {
  return g.virtualTensor(l.scores(), l.scoreStrides(), t);
}

// Keys after the query (causal), then keys at or beyond `window` behind it,
// get -inf.
TensorId applyMasks(GraphBuilder &g, const Layout &l, TensorId s, int64_t window) {
  TensorId row = scoreTensor(g, l, CUDNN_DATA_INT32), col = scoreTensor(g, l, CUDNN_DATA_INT32);
  g.genIndex(s, row, 2);
  g.genIndex(s, col, 3);
  TensorId keep = scoreTensor(g, l, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, keep, col, -1, CUDNN_DATA_BOOLEAN);
  TensorId causal = scoreTensor(g, l);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, causal, kNegInf, keep);
  if (window == 0)
    return causal;
  TensorId row2 = scoreTensor(g, l, CUDNN_DATA_INT32), col2 = scoreTensor(g, l, CUDNN_DATA_INT32);
  g.genIndex(causal, row2, 2);
  g.genIndex(causal, col2, 3);
  TensorId shifted = scoreTensor(g, l);
  g.pointwise(CUDNN_POINTWISE_ADD, col2, shifted, kWindow);
  TensorId inside = scoreTensor(g, l, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GT, shifted, inside, row2, -1, CUDNN_DATA_BOOLEAN);
  TensorId banded = scoreTensor(g, l);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, causal, banded, kNegInf, inside);
  return banded;
}

void declareCommon(GraphBuilder &g, const Layout &l, int64_t window) {
  g.tensor(kQ, l.bhtd(l.H), l.bhtdStrides(l.H), CUDNN_DATA_BFLOAT16);
  g.tensor(kK, l.bhdt(l.Hk), l.bhdtStrides(l.Hk), CUDNN_DATA_BFLOAT16);
  g.tensor(kO, l.bhtd(l.H), l.bhtdStrides(l.H), CUDNN_DATA_BFLOAT16);
  g.tensor(kStats, l.rows(), l.rowStrides(), CUDNN_DATA_FLOAT);
  g.scalar(kScale, CUDNN_DATA_FLOAT);
  g.scalar(kNegInf, CUDNN_DATA_FLOAT);
  if (window)
    g.scalar(kWindow, CUDNN_DATA_FLOAT);
}

Status buildForward(cudnnHandle_t handle, const PlanKey &k, Plan &plan) {
  const Layout l{k.B, k.T, k.nh, k.nkv, k.d};
  GraphBuilder g(handle);
  declareCommon(g, l, k.window);
  g.tensor(kV, l.bhtd(l.Hk), l.bhtdStrides(l.Hk), CUDNN_DATA_BFLOAT16);

  TensorId s = scoreTensor(g, l), scaled = scoreTensor(g, l);
  g.matmul(kQ, kK, s);
  g.pointwise(CUDNN_POINTWISE_MUL, s, scaled, kScale);
  TensorId masked = applyMasks(g, l, scaled, k.window);

  TensorId max = g.virtualTensor(l.rows(), l.rowStrides());
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, max);
  TensorId shifted = scoreTensor(g, l), e = scoreTensor(g, l);
  g.pointwise(CUDNN_POINTWISE_SUB, masked, shifted, max);
  g.pointwise(CUDNN_POINTWISE_EXP, shifted, e);
  TensorId sum = g.virtualTensor(l.rows(), l.rowStrides()),
           logSum = g.virtualTensor(l.rows(), l.rowStrides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  g.pointwise(CUDNN_POINTWISE_LOG, sum, logSum);
  g.pointwise(CUDNN_POINTWISE_ADD, max, kStats, logSum);
  TensorId p = scoreTensor(g, l, CUDNN_DATA_BFLOAT16);
  g.pointwise(CUDNN_POINTWISE_DIV, e, p, sum);
  g.matmul(p, kV, kO);
  return g.finish("cuDNN attention forward graph", plan);
}

// dst = reduce over the query heads of each kv head of (a @ b); a single
// matmul when there is no grouping.
void matmulPerKvHead(GraphBuilder &g, const Layout &l, TensorId a, TensorId b, TensorId dst) {
  if (l.H == l.Hk) {
    g.matmul(a, b, dst);
    return;
  }
  TensorId full = g.virtualTensor(l.packed(), l.packedStrides(), CUDNN_DATA_BFLOAT16);
  g.matmul(a, b, full);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, dst);
}

Status buildBackward(cudnnHandle_t handle, const PlanKey &k, Plan &plan) {
  const Layout l{k.B, k.T, k.nh, k.nkv, k.d};
  GraphBuilder g(handle);
  declareCommon(g, l, k.window);
  g.tensor(kV, l.bhdt(l.Hk), l.bhdtStrides(l.Hk), CUDNN_DATA_BFLOAT16);
  g.tensor(kDO, l.bhtd(l.H), l.bhtdStrides(l.H), CUDNN_DATA_BFLOAT16);
  g.tensor(kDQ, l.bhtd(l.H), l.bhtdStrides(l.H), CUDNN_DATA_BFLOAT16);
  g.tensor(kDK, l.bhtd(l.Hk), l.bhtdStrides(l.Hk), CUDNN_DATA_BFLOAT16);
  g.tensor(kDV, l.bhtd(l.Hk), l.bhtdStrides(l.Hk), CUDNN_DATA_BFLOAT16);
  g.tensor(kSoftmaxSum, l.rows(), l.rowStrides(), CUDNN_DATA_FLOAT);
  g.tensor(kDQAccum, l.packed(), l.packedStrides(), CUDNN_DATA_FLOAT);
  g.scalar(kOne, CUDNN_DATA_FLOAT);

  // D = rowsum(dO * O)
  TensorId prod = g.virtualTensor(l.bhtd(l.H), l.bhtdStrides(l.H));
  g.pointwise(CUDNN_POINTWISE_MUL, kDO, prod, kO);
  TensorId rowSum = g.virtualTensor(l.rows(), l.rowStrides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, prod, rowSum);
  g.pointwise(CUDNN_POINTWISE_MUL, rowSum, kSoftmaxSum, kOne);

  // P from the statistics; dV = P^T dO.
  TensorId s = scoreTensor(g, l), scaled = scoreTensor(g, l), centred = scoreTensor(g, l);
  g.matmul(kQ, kK, s);
  g.pointwise(CUDNN_POINTWISE_MUL, s, scaled, kScale);
  g.pointwise(CUDNN_POINTWISE_SUB, scaled, centred, kStats);
  TensorId masked = applyMasks(g, l, centred, k.window);
  TensorId p = scoreTensor(g, l);
  g.pointwise(CUDNN_POINTWISE_EXP, masked, p);
  TensorId pT = g.virtualTensor(l.scores(), l.scoresTransposed(), CUDNN_DATA_BFLOAT16);
  g.reshape(p, pT);
  matmulPerKvHead(g, l, pT, kDO, kDV);

  // dS = P (dO V^T - D) scale; dK = dS^T Q.
  TensorId dp = scoreTensor(g, l), dpc = scoreTensor(g, l), dsu = scoreTensor(g, l),
           ds = scoreTensor(g, l);
  g.matmul(kDO, kV, dp);
  g.pointwise(CUDNN_POINTWISE_SUB, dp, dpc, kSoftmaxSum);
  g.pointwise(CUDNN_POINTWISE_MUL, dpc, dsu, p);
  g.pointwise(CUDNN_POINTWISE_MUL, dsu, ds, kScale);
  TensorId dsT = g.virtualTensor(l.scores(), l.scoresTransposed(), CUDNN_DATA_BFLOAT16);
  g.reshape(ds, dsT);
  matmulPerKvHead(g, l, dsT, kQ, kDK);

  // dQ = dS K, accumulated in fp32.
  TensorId kRows = g.virtualTensor(l.bhtd(l.Hk), l.bhtdStrides(l.Hk));
  g.reshape(kK, kRows);
  g.matmul(ds, kRows, kDQAccum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, kDQAccum, kDQ);
  return g.finish("cuDNN attention backward graph", plan);
}

//===----------------------------------------------------------------------===//
// Segment ids and padding
//===----------------------------------------------------------------------===//

// Per batch row: the length of the leading run of the first id, and whether
// the row is that run (a non-zero id) followed by zeros only.
__global__ void documentRows(const void *seg, DType st, int64_t T, int32_t *rows, int64_t B) {
  __shared__ int64_t firstOther;
  __shared__ int bad;
  const int64_t b = blockIdx.x, base = b * T;
  const int64_t first = loadIndex(seg, st, base);
  if (threadIdx.x == 0) {
    firstOther = T;
    bad = 0;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < T; i += blockDim.x)
    if (loadIndex(seg, st, base + i) != first)
      atomicMin(reinterpret_cast<unsigned long long *>(&firstOther), (unsigned long long)i);
  __syncthreads();
  const int64_t len = firstOther;
  for (int64_t i = len + threadIdx.x; i < T; i += blockDim.x)
    if (loadIndex(seg, st, base + i) != 0)
      bad = 1;
  __syncthreads();
  if (threadIdx.x == 0) {
    rows[b] = int32_t(len);
    rows[B + b] = first != 0 && !bad;
  }
}

// dst row (b, t) of `width` elements = src's, or zeros where t >= len[b];
// dst may be src.
__global__ void keepDocumentRows(const __nv_bfloat16 *src, __nv_bfloat16 *dst, const int32_t *lens,
                                 int64_t T, int64_t width) {
  const int64_t t = blockIdx.x, b = blockIdx.y;
  const bool keep = t < lens[b];
  const int64_t base = (b * T + t) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    dst[base + i] = keep ? src[base + i] : __float2bfloat16(0.0f);
}

// dst[b, h, t] of [B, nh, T] statistics = src's, or `fill` where t >= len[b];
// dst may be src.
__global__ void keepDocumentStats(const float *src, float *dst, const int32_t *lens, int64_t T,
                                  float fill) {
  const int64_t h = blockIdx.x, b = blockIdx.y, base = (b * gridDim.x + h) * T;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    dst[base + t] = t < lens[b] ? src[base + t] : fill;
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

/// Why cuDNN cannot serve the call, or "". The statistics (the forward's
/// output 1, the backward's input 6) are fp32; every other tensor but the
/// segment ids must be aligned bf16.
std::string unsupportedReason(const KernelArgs &args, const AttentionShape &p, bool grad) {
  if (p.capped)
    return "logit soft-capping";
  if (p.d % 8 != 0 || p.d > 256)
    return "head dimension " + std::to_string(p.d) + " (needs a multiple of 8, at most 256)";
  auto bf16 = [](const TensorView &t) { return t.dtype == DType::BF16 && aligned16(t); };
  const TensorView *lse = p.withLse ? (grad ? &args.inputs[6] : &args.outputs[1]) : nullptr;
  for (size_t i = 0; i < args.inputs.size(); ++i)
    if (i != 3 && &args.inputs[i] != lse && !bf16(args.inputs[i]))
      return "input " + std::to_string(i) + " is not an aligned bf16 tensor";
  for (size_t i = 0; i < args.outputs.size(); ++i)
    if (&args.outputs[i] != lse && !bf16(args.outputs[i]))
      return "output " + std::to_string(i) + " is not an aligned bf16 tensor";
  if (lse && !aligned16(*lse))
    return "the statistics are not 16-byte aligned";
  return "";
}

Status cudnnCheck(const KernelArgs &args, cudnnStatus_t s, const char *what) {
  if (s == CUDNN_STATUS_SUCCESS)
    return Status();
  return args.fail(std::string(what) + ": " + cudnnGetErrorString(s));
}

Status stateOf(const KernelArgs &args, CudnnAttentionState *&out) {
  CudaContext &ctx = contextOf(args);
  if (!ctx.cudnn) {
    auto st = std::make_shared<CudnnAttentionState>();
    G3RT_RETURN_IF_ERROR(cudnnCheck(args, cudnnCreate(&st->handle), "creating a cuDNN handle"));
    G3RT_RETURN_IF_ERROR(
        cudnnCheck(args, cudnnSetStream(st->handle, ctx.stream), "setting cuDNN's stream"));
    ctx.cudnn = std::move(st);
  }
  out = ctx.cudnn.get();
  return Status();
}

// The plan for `key`, built on first use; null, with `why`, where cuDNN
// offers no engine for the shape (remembered, so it is asked once).
const Plan *planFor(CudnnAttentionState &st, const PlanKey &key, std::string &why) {
  auto it = st.plans.find(key);
  if (it == st.plans.end()) {
    Plan plan;
    Status s = key.grad ? buildBackward(st.handle, key, plan) : buildForward(st.handle, key, plan);
    it = st.plans.emplace(key, std::make_pair(std::move(plan), s.message())).first;
  }
  why = it->second.second;
  return it->second.first.plan ? &it->second.first : nullptr;
}

// Grows the scratch memory to `bytes` (waiting for work that may use the old).
Status reserveScratch(const KernelArgs &args, CudnnAttentionState &st, size_t bytes) {
  if (bytes <= st.scratchBytes)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  cudaError_t e = cudaStreamSynchronize(stream);
  if (e == cudaSuccess) {
    cudaFree(st.scratch);
    st.scratch = nullptr;
    st.scratchBytes = 0;
    e = cudaMalloc(&st.scratch, bytes);
    ++contextOf(args).reallocations;
  }
  if (e != cudaSuccess)
    return cudaFailure(
        args, e,
        ("allocating " + std::to_string(bytes) + " bytes of cuDNN attention scratch memory")
            .c_str());
  st.scratchBytes = bytes;
  return Status();
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// Grows the per-batch-row document buffer to B rows.
Status reserveRows(const KernelArgs &args, CudnnAttentionState &st, int64_t B) {
  if (st.rowsCapacity >= B)
    return Status();
  cudaFree(st.rows);
  st.rows = nullptr;
  st.rowsCapacity = 0;
  cudaError_t e = cudaMalloc(&st.rows, size_t(2 * B) * sizeof(int32_t));
  if (e != cudaSuccess)
    return cudaFailure(args, e, "allocating the document-length buffer");
  st.rowsCapacity = B;
  ++contextOf(args).reallocations;
  return Status();
}

// Where each row's document ends, into st.rows, and whether any row is
// padded. Rows known to be one document each take the padded path, right
// for full rows too, without a read-back (which a CUDA graph cannot hold);
// otherwise the lengths are read back, and `why` tells of a row that is not
// one document followed by padding.
Status findDocuments(const KernelArgs &args, CudnnAttentionState &st, const AttentionShape &p,
                     bool &padded, std::string &why) {
  CudaContext &ctx = contextOf(args);
  cudaStream_t stream = ctx.stream;
  const TensorView &seg = args.inputs[3];
  documentRows<<<unsigned(p.B), 256, 0, stream>>>(seg.data, seg.dtype, p.T, st.rows, p.B);
  G3RT_CUDA_CHECK_LAUNCH(args, "checking segment ids");
  padded = true;
  if (ctx.rowDocuments != CudaContext::RowDocuments::Unknown)
    return Status();
  std::vector<int32_t> rows(size_t(2 * p.B));
  cudaError_t e = cudaMemcpyAsync(rows.data(), st.rows, rows.size() * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reading the document lengths");
  padded = false;
  for (int64_t b = 0; b < p.B; ++b) {
    if (!rows[size_t(p.B + b)]) {
      why = "batch row " + std::to_string(b) + " is not one document followed by padding";
      return Status();
    }
    padded = padded || rows[size_t(b)] < p.T;
  }
  return Status();
}

/// One call's buffers: the statistics and the forward's output, and for the
/// backward the masked dO, D = rowsum(dO * O) and the fp32 dq accumulator;
/// then the plans' workspace.
struct CallBuffers {
  float *stats = nullptr;
  void *o = nullptr, *dO = nullptr, *softmaxSum = nullptr, *dqAccum = nullptr;
  void *workspace = nullptr;
  size_t accBytes = 0;
};

/// The scalars the graphs take by value, bound by address; window 0 means
/// none (kWindow is then left out).
struct GraphScalars {
  float scale, negInf, window, one;
};

// Lays the call's buffers out in st's scratch memory, grown to fit: the
// statistics, and for the backward the forward's output (unless saved), the
// masked dO, D and the dq accumulator; then the plans' workspace. The
// forward writes its statistics into its `lse` output where there is one.
Status layOutScratch(const KernelArgs &args, CudnnAttentionState &st, const AttentionShape &p,
                     bool grad, const Plan &fwd, const Plan *bwd, CallBuffers &buf) {
  const bool saved = grad && p.withLse;
  // The parts the memory planner bounds (scratch_bounds.h).
  const AttentionScratchParts parts = attentionScratchParts(p.B, p.T, p.nh, p.d);
  const size_t rowsBytes = parts.stats, actBytes = parts.act;
  buf.accBytes = parts.acc;
  size_t used = rowsBytes + (grad ? (saved ? 1 : 2) * actBytes + rowsBytes + buf.accBytes : 0);
  const size_t work = size_t(std::max(fwd.workspaceBytes, bwd ? bwd->workspaceBytes : 0));
  G3RT_RETURN_IF_ERROR(reserveScratch(args, st, used + align256(work)));
  char *base = static_cast<char *>(st.scratch);
  buf.stats = !grad && p.withLse ? static_cast<float *>(args.outputs[1].data)
                                 : reinterpret_cast<float *>(base);
  char *cursor = base + rowsBytes;
  buf.o = args.outputs[0].data;
  if (grad) {
    buf.o = saved ? args.inputs[5].data : cursor;
    if (!saved)
      cursor += actBytes;
    buf.dO = cursor;
    buf.softmaxSum = cursor + actBytes;
    buf.dqAccum = cursor + actBytes + rowsBytes;
  }
  buf.workspace = base + used;
  return Status();
}

// The forward's output and statistics: for a backward that has the saved
// ones, those (padded rows' statistics +inf, so that their probabilities
// stay finite), else what cuDNN's forward graph computes.
Status runForward(const KernelArgs &args, CudnnAttentionState &st, const AttentionShape &p,
                  bool grad, const Plan &fwd, bool padded, GraphScalars &scalars,
                  CallBuffers &buf) {
  if (grad && p.withLse) {
    const auto *lse = static_cast<const float *>(args.inputs[6].data);
    if (!padded) {
      buf.stats = const_cast<float *>(lse);
      return Status();
    }
    const dim3 headGrid(unsigned(p.nh), unsigned(p.B));
    keepDocumentStats<<<headGrid, 256, 0, contextOf(args).stream>>>(lse, buf.stats, st.rows, p.T,
                                                                    INFINITY);
    G3RT_CUDA_CHECK_LAUNCH(args, "masking padded attention statistics");
    return Status();
  }
  std::vector<TensorId> uids = {kQ, kK, kV, kO, kStats, kScale, kNegInf};
  std::vector<void *> ptrs = {args.inputs[0].data, args.inputs[1].data, args.inputs[2].data, buf.o,
                              buf.stats,           &scalars.scale,      &scalars.negInf};
  if (scalars.window != 0.0f) {
    uids.push_back(kWindow);
    ptrs.push_back(&scalars.window);
  }
  Status s = cudnn::execute(st.handle, fwd, uids, ptrs, buf.workspace);
  if (!s.ok())
    return args.fail(s.message());
  return Status();
}

// The forward's padded rows: zero outputs and, where the step takes them,
// zero statistics, as on the CPU.
Status zeroPaddedOutputs(const KernelArgs &args, const AttentionShape &p, const int32_t *lens,
                         const CallBuffers &buf) {
  cudaStream_t stream = contextOf(args).stream;
  auto *out = static_cast<__nv_bfloat16 *>(buf.o);
  keepDocumentRows<<<dim3(unsigned(p.T), unsigned(p.B)), 256, 0, stream>>>(out, out, lens, p.T,
                                                                           p.nh * p.d);
  G3RT_CUDA_CHECK_LAUNCH(args, "zeroing padded attention rows");
  if (p.withLse) {
    keepDocumentStats<<<dim3(unsigned(p.nh), unsigned(p.B)), 256, 0, stream>>>(buf.stats, buf.stats,
                                                                               lens, p.T, 0.0f);
    G3RT_CUDA_CHECK_LAUNCH(args, "zeroing padded attention statistics");
  }
  return Status();
}

// cuDNN's backward graph, from the forward's output and statistics in
// `buf`; padded rows' incoming gradients are zeroed first.
Status runBackward(const KernelArgs &args, CudnnAttentionState &st, const AttentionShape &p,
                   const Plan &bwd, bool padded, GraphScalars &scalars, const CallBuffers &buf) {
  cudaStream_t stream = contextOf(args).stream;
  const void *dOut = args.inputs[4].data;
  if (padded) {
    keepDocumentRows<<<dim3(unsigned(p.T), unsigned(p.B)), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16 *>(dOut), static_cast<__nv_bfloat16 *>(buf.dO), st.rows,
        p.T, p.nh * p.d);
    G3RT_CUDA_CHECK_LAUNCH(args, "zeroing padded attention gradients");
    dOut = buf.dO;
  }
  cudaError_t e = cudaMemsetAsync(buf.dqAccum, 0, buf.accBytes, stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the dq accumulator");
  std::vector<TensorId> uids = {kQ,  kK,  kV,  kO,  kStats,      kScale,   kNegInf,
                                kDO, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum, kOne};
  std::vector<void *> ptrs = {args.inputs[0].data,
                              args.inputs[1].data,
                              args.inputs[2].data,
                              buf.o,
                              buf.stats,
                              &scalars.scale,
                              &scalars.negInf,
                              const_cast<void *>(dOut),
                              args.outputs[0].data,
                              args.outputs[1].data,
                              args.outputs[2].data,
                              buf.softmaxSum,
                              buf.dqAccum,
                              &scalars.one};
  if (scalars.window != 0.0f) {
    uids.push_back(kWindow);
    ptrs.push_back(&scalars.window);
  }
  Status s = cudnn::execute(st.handle, bwd, uids, ptrs, buf.workspace);
  if (!s.ok())
    return args.fail(s.message());
  return Status();
}

} // namespace

Status cudnnAttention(const KernelArgs &args, const AttentionShape &p, bool grad, bool &served) {
  served = false;
  CudaContext &ctx = contextOf(args);
  if (ctx.attention == AttentionImpl::Own)
    return Status();
  auto decline = [&](const std::string &why) {
    if (ctx.attention == AttentionImpl::Cudnn)
      return args.fail("G3MOE_CUDA_ATTENTION=cudnn, but cuDNN cannot serve this call: " + why);
    return Status();
  };
  if (std::string why = unsupportedReason(args, p, grad); !why.empty())
    return decline(why);

  CudnnAttentionState *st = nullptr;
  G3RT_RETURN_IF_ERROR(stateOf(args, st));

  // Where each row's document ends (read back: it decides the path).
  if (ctx.rowDocuments == CudaContext::RowDocuments::Packed)
    return decline("the batch rows hold packed documents");
  G3RT_RETURN_IF_ERROR(reserveRows(args, *st, p.B));
  bool padded = true;
  std::string why;
  G3RT_RETURN_IF_ERROR(findDocuments(args, *st, p, padded, why));
  if (!why.empty())
    return decline(why);

  const int64_t window = p.window > 0 && p.window < p.T ? p.window : 0;
  const Plan *fwd = planFor(*st, {p.B, p.T, p.nh, p.nkv, p.d, window, false}, why);
  if (!fwd)
    return decline(why);
  const Plan *bwd = grad ? planFor(*st, {p.B, p.T, p.nh, p.nkv, p.d, window, true}, why) : nullptr;
  if (grad && !bwd)
    return decline(why);

  CallBuffers buf;
  G3RT_RETURN_IF_ERROR(layOutScratch(args, *st, p, grad, *fwd, bwd, buf));
  GraphScalars scalars{p.scale, -INFINITY, float(window), 1.0f};
  G3RT_RETURN_IF_ERROR(runForward(args, *st, p, grad, *fwd, padded, scalars, buf));
  if (grad)
    G3RT_RETURN_IF_ERROR(runBackward(args, *st, p, *bwd, padded, scalars, buf));
  else if (padded)
    G3RT_RETURN_IF_ERROR(zeroPaddedOutputs(args, p, st->rows, buf));
  served = true;
  return Status();
}

} // namespace g3rt::cuda
