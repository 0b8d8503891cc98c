//===- program.cpp - read and verify step.bin -----------------------------===//
//
// Nothing read from the file is trusted: after the container and FlatBuffer
// checks, every index, size and name is checked against what it refers to
// before the decoded program is handed out.
//
//===----------------------------------------------------------------------===//

#include "runtime/step/program.h"

#include "runtime/base/file.h"
#include "runtime/kernels/kernel_names.h"
#include "runtime/schemas/container.h"
#include "runtime/schemas/step_generated.h"

#include <algorithm>
#include <limits>
#include <map>

namespace g3rt {

namespace fbs = schema;

int64_t FunctionDesc::findOutput(const std::string &name) const {
  for (const auto &[n, index] : outputs)
    if (n == name)
      return index;
  return -1;
}

const FunctionDesc *StepProgram::findFunction(const std::string &name) const {
  for (const FunctionDesc &f : functions)
    if (f.name == name)
      return &f;
  return nullptr;
}

const ParamDesc *StepProgram::findParam(const std::string &name) const {
  for (const ParamDesc &p : params)
    if (p.name == name)
      return &p;
  return nullptr;
}

const DerivedParamDesc *StepProgram::findDerived(const std::string &name) const {
  for (const DerivedParamDesc &d : derived)
    if (d.name == name)
      return &d;
  return nullptr;
}

const DerivedParamDesc *StepProgram::partnerOf(const DerivedParamDesc &d) const {
  for (const DerivedParamDesc &o : derived)
    if (o.source == d.source && o.transposed() == d.transposed() && o.scales() != d.scales())
      return &o;
  return nullptr;
}

namespace {

Status decodeDType(fbs::DType t, DType &out) {
  if (uint8_t(t) > uint8_t(DType::F8E4M3))
    return Status::error("unknown element type " + std::to_string(int(t)));
  out = DType(uint8_t(t));
  return Status();
}

/// FlatBuffers' verifier checks only that a vector's length field is 4-byte
/// aligned, so a damaged file can place 8-byte elements where reading them
/// would be a misaligned load. An empty vector has nothing to read, and
/// FlatBufferBuilder does not align it (a scalar's shape is one).
template <typename T>
Status checkAligned(const flatbuffers::Vector<T> *v, const std::string &what) {
  if (v && v->size() > 0 && reinterpret_cast<uintptr_t>(v->data()) % alignof(T) != 0)
    return Status::error(what + " is not aligned (the step payload is malformed)");
  return Status();
}

Status decodeShape(const flatbuffers::Vector<int64_t> *shape, std::vector<int64_t> &out,
                   uint64_t elementBytes, uint64_t &bytes) {
  out.clear();
  G3RT_RETURN_IF_ERROR(checkAligned(shape, "the shape"));
  uint64_t n = 1;
  if (shape)
    for (int64_t d : *shape) {
      if (d < 0 || (d > 0 && n > (uint64_t(1) << 48) / uint64_t(d)))
        return Status::error("invalid shape dimension " + std::to_string(d));
      n *= uint64_t(d);
      out.push_back(d);
    }
  bytes = n * elementBytes;
  return Status();
}

Status decodeAttrs(const flatbuffers::Vector<flatbuffers::Offset<fbs::Attr>> *attrs,
                   KernelAttrs &out) {
  if (!attrs)
    return Status();
  for (const fbs::Attr *a : *attrs) {
    std::string name = a->name()->str();
    switch (a->kind()) {
    case fbs::AttrKind::Int:
      out.set(name, AttrValue::ofInt(a->i()));
      break;
    case fbs::AttrKind::Float:
      out.set(name, AttrValue::ofFloat(a->f()));
      break;
    case fbs::AttrKind::Bool:
      out.set(name, AttrValue::ofBool(a->b()));
      break;
    case fbs::AttrKind::String:
      out.set(name, AttrValue::ofString(a->s() ? a->s()->str() : ""));
      break;
    case fbs::AttrKind::FloatArray: {
      std::vector<double> values;
      G3RT_RETURN_IF_ERROR(checkAligned(a->floats(), "attribute '" + name + "'"));
      if (a->floats())
        values.assign(a->floats()->begin(), a->floats()->end());
      out.set(name, AttrValue::ofFloats(std::move(values)));
      break;
    }
    default:
      return Status::error("attribute '" + name + "' has an unknown kind");
    }
  }
  return Status();
}

/// `value` as enum E when it is at most `last`; FlatBuffers does not check
/// enum ranges, a damaged or foreign file may hold any byte.
template <typename E, typename F> Status decodeEnum(F value, E last, const char *field, E &out) {
  if (uint8_t(value) > uint8_t(last))
    return Status::error(std::string("the configuration's ") + field + " has an unknown value " +
                         std::to_string(int(value)));
  out = E(uint8_t(value));
  return Status();
}

std::string stringOr(const flatbuffers::String *s, const std::string &fallback) {
  return s ? s->str() : fallback;
}

/// step.fbs's ModelConfig as the runtime's; an absent table leaves `out`'s
/// defaults.
Status decodeModel(const fbs::ModelConfig *m, ModelConfig &out) {
  if (!m)
    return Status();
  out.modelType = stringOr(m->model_type(), out.modelType);
  out.checkpointPrefix = stringOr(m->checkpoint_prefix(), out.checkpointPrefix);
  out.vocabSize = m->vocab_size();
  out.hiddenSize = m->hidden_size();
  out.intermediateSize = m->intermediate_size();
  out.numHiddenLayers = m->num_hidden_layers();
  out.numAttentionHeads = m->num_attention_heads();
  out.numKeyValueHeads = m->num_key_value_heads();
  out.headDim = m->head_dim();
  out.tieWordEmbeddings = m->tie_word_embeddings();
  out.initializerRange = m->initializer_range();
  out.padTokenId = m->pad_token_id();
  out.bosTokenId = m->bos_token_id();
  out.eosTokenId = m->eos_token_id();
  out.maxPositionEmbeddings = m->max_position_embeddings();
  out.rmsNormEps = m->rms_norm_eps();
  out.slidingWindow = m->sliding_window();
  if (auto v = m->query_pre_attn_scalar())
    out.queryPreAttnScalar = *v;
  out.ropeTheta = m->rope_theta();
  out.ropeLocalBaseFreq = m->rope_local_base_freq();
  if (auto v = m->final_logit_softcapping())
    out.finalLogitSoftcapping = *v;
  if (auto v = m->attn_logit_softcapping())
    out.attnLogitSoftcapping = *v;
  out.nRoutedExperts = m->n_routed_experts();
  out.numExpertsPerTok = m->num_experts_per_tok();
  out.firstKDenseReplace = m->first_k_dense_replace();
  G3RT_RETURN_IF_ERROR(
      decodeEnum(m->router_type(), RouterType::SigmoidGrouped, "router_type", out.routerType));
  out.routerJitterNoise = m->router_jitter_noise();
  out.inputJitterNoise = m->input_jitter_noise();
  out.routerAuxLossCoef = m->router_aux_loss_coef();
  out.routerZLossCoef = m->router_z_loss_coef();
  out.routedScalingFactor = m->routed_scaling_factor();
  out.nGroup = m->n_group();
  out.topkGroup = m->topk_group();
  out.normTopkProb = m->norm_topk_prob();
  out.nSharedExperts = m->n_shared_experts();
  out.freezeSharedExperts = m->freeze_shared_experts();
  return Status();
}

/// step.fbs's TrainingOptions as the runtime's; an absent table leaves
/// `out`'s defaults.
Status decodeTraining(const fbs::TrainingOptions *t, TrainingConfig &out) {
  if (!t)
    return Status();
  G3RT_RETURN_IF_ERROR(decodeEnum(t->mode(), StepMode::Eval, "mode", out.mode));
  G3RT_RETURN_IF_ERROR(decodeEnum(t->precision(), Precision::FP32, "precision", out.precision));
  out.seqLen = t->seq_len();
  out.microBatch = t->micro_batch();
  G3RT_RETURN_IF_ERROR(decodeEnum(t->finetuning(), Finetuning::Full, "finetuning", out.finetuning));
  out.loraR = t->lora_r();
  out.loraAlpha = t->lora_alpha();
  out.loraDropout = t->lora_dropout();
  out.loraTargetModules.clear();
  if (t->lora_target_modules())
    for (const flatbuffers::String *name : *t->lora_target_modules())
      out.loraTargetModules.push_back(name->str());
  out.trainRouter = t->train_router();
  out.denseFFNNoGrad = t->dense_ffn_no_grad();
  out.seed = t->seed();
  out.learningRate = t->learning_rate();
  G3RT_RETURN_IF_ERROR(decodeEnum(t->lr_scheduler_type(), LRSchedule::ConstantWithWarmup,
                                  "lr_scheduler_type", out.lrSchedulerType));
  out.warmupRatio = t->warmup_ratio();
  out.warmupSteps = t->warmup_steps();
  out.weightDecay = t->weight_decay();
  out.adamBeta1 = t->adam_beta1();
  out.adamBeta2 = t->adam_beta2();
  out.adamEpsilon = t->adam_epsilon();
  out.maxGradNorm = t->max_grad_norm();
  out.gradientAccumulationSteps = t->gradient_accumulation_steps();
  out.numTrainEpochs = t->num_train_epochs();
  out.maxSteps = t->max_steps();
  out.loggingSteps = t->logging_steps();
  out.saveSteps = t->save_steps();
  out.saveTotalLimit = t->save_total_limit();
  out.evalSteps = t->eval_steps();
  out.dataset = stringOr(t->dataset(), out.dataset);
  out.testSize = t->test_size();
  out.maxLineBytes = t->max_line_bytes();
  out.dataParallel = t->data_parallel();
  out.zeroStage = t->zero_stage();
  out.packing = t->packing();
  out.assistantOnlyLoss = t->assistant_only_loss();
  G3RT_RETURN_IF_ERROR(decodeEnum(t->loss_denominator(), LossDenominator::Unshifted,
                                  "loss_denominator", out.lossDenominator));
  out.outputDir = stringOr(t->output_dir(), out.outputDir);
  return Status();
}

/// Derived parameter `d`: a new name, a known derivation, dtype and shape
/// (checkDerivedParams checks them against the source).
Status decodeDerived(const fbs::DerivedParam *d, StepProgram &program) {
  DerivedParamDesc desc;
  desc.name = d->name()->str();
  desc.source = d->source()->str();
  const std::string where = "derived parameter '" + desc.name + "'";
  if (program.findParam(desc.name) || program.findDerived(desc.name))
    return Status::error(where + " appears twice");
  if (uint8_t(d->derivation()) > uint8_t(Derivation::E4M3TransposedScales))
    return Status::error(where + " has an unknown derivation");
  desc.derivation = Derivation(uint8_t(d->derivation()));
  uint64_t bytes = 0;
  Status s = decodeDType(d->dtype(), desc.dtype);
  if (s.ok())
    s = decodeShape(d->shape(), desc.shape, dtypeSize(desc.dtype), bytes);
  G3RT_RETURN_IF_ERROR(s.withContext(where));
  program.derived.push_back(std::move(desc));
  return Status();
}

/// Buffer `b`, the next of `fn`: its kind, dtype and shape, a view matching
/// its source, a planned buffer inside its arena, a persistent one matching
/// the parameter table.
Status decodeBuffer(const fbs::Buffer *b, const StepProgram &program, const FunctionDesc &fn,
                    BufferDesc &desc) {
  const std::string where = "buffer " + std::to_string(fn.buffers.size());
  if (uint8_t(b->kind()) > uint8_t(BufferKind::Host))
    return Status::error(where + " has an unknown kind");
  desc.kind = BufferKind(uint8_t(b->kind()));
  desc.name = b->name() ? b->name()->str() : "";
  G3RT_RETURN_IF_ERROR(decodeDType(b->dtype(), desc.dtype).withContext(where));
  G3RT_RETURN_IF_ERROR(
      decodeShape(b->shape(), desc.shape, dtypeSize(desc.dtype), desc.bytes).withContext(where));
  desc.offset = b->offset();
  desc.viewOf = b->view_of();
  if (desc.viewOf >= 0) {
    if (size_t(desc.viewOf) >= fn.buffers.size())
      return Status::error(where + " views a buffer declared after it");
    const BufferDesc &src = fn.buffers[size_t(desc.viewOf)];
    if (src.bytes != desc.bytes || src.kind != desc.kind || src.offset != desc.offset ||
        src.name != desc.name)
      return Status::error(where + " is a view that does not match its source");
  }
  if (isPlanned(desc.kind)) {
    const bool host = desc.kind == BufferKind::Host;
    const std::string arenaName = host ? "host arena" : "arena";
    const uint64_t arena = host ? fn.hostBytes : fn.arenaBytes;
    if (desc.offset > arena || desc.bytes > arena - desc.offset)
      return Status::error(where + " lies outside the " + arenaName + " (offset " +
                           std::to_string(desc.offset) + ", " + std::to_string(desc.bytes) +
                           " bytes, " + arenaName + " " + std::to_string(arena) + ")");
    if (program.arenaAlignment && desc.offset % program.arenaAlignment)
      return Status::error(where + " is not aligned");
    return Status();
  }
  if (desc.name.empty())
    return Status::error(where + " is persistent but has no name");
  if (desc.kind == BufferKind::Input)
    return Status();
  if (const DerivedParamDesc *d = program.findDerived(desc.name)) {
    if (desc.kind != BufferKind::Param || d->shape != desc.shape || d->dtype != desc.dtype)
      return Status::error(where + " ('" + desc.name +
                           "') does not match the derived parameter of that name");
    return Status();
  }
  const ParamDesc *p = program.findParam(desc.name);
  if (!p)
    return Status::error(where + " names '" + desc.name + "', which is not in the parameter table");
  if (p->shape != desc.shape)
    return Status::error(where + " ('" + desc.name + "') has shape " + shapeString(desc.shape) +
                         ", the parameter " + shapeString(p->shape));
  if (desc.kind == BufferKind::Param && p->dtype != desc.dtype)
    return Status::error(where + " ('" + desc.name + "') has another dtype than the parameter");
  if (desc.kind != BufferKind::Param && (!p->trainable || desc.dtype != DType::F32))
    return Status::error(where + " holds optimizer state of '" + desc.name +
                         "', which is not a trainable fp32 parameter");
  return Status();
}

/// The buffer that buffer `i` of `fn` views, through any chain of views.
uint32_t rootOf(const FunctionDesc &fn, uint32_t i) {
  while (fn.buffers[i].viewOf >= 0)
    i = uint32_t(fn.buffers[i].viewOf);
  return i;
}

/// checkArenaPlan for the buffers of one kind (arena or host).
Status checkPlan(const FunctionDesc &fn, BufferKind kind) {
  // Live range of each root buffer of `kind`, in instruction indices;
  // outputs are read after the last instruction.
  size_t n = fn.buffers.size(), end = fn.instrs.size();
  std::vector<int64_t> first(n, -1), last(n, -1);
  auto touch = [&](uint32_t b, int64_t at) {
    uint32_t r = rootOf(fn, b);
    if (fn.buffers[r].kind != kind)
      return;
    if (first[r] < 0)
      first[r] = at;
    last[r] = std::max(last[r], at);
  };
  for (size_t i = 0; i < fn.instrs.size(); ++i) {
    for (uint32_t b : fn.instrs[i].inputs)
      touch(b, int64_t(i));
    for (uint32_t b : fn.instrs[i].outputs)
      touch(b, int64_t(i));
  }
  for (const auto &o : fn.outputs)
    touch(o.second, int64_t(end));

  std::vector<uint32_t> live;
  for (uint32_t i = 0; i < n; ++i)
    if (first[i] >= 0)
      live.push_back(i);
  std::sort(live.begin(), live.end(),
            [&](uint32_t a, uint32_t b) { return fn.buffers[a].offset < fn.buffers[b].offset; });
  for (size_t a = 0; a < live.size(); ++a) {
    const BufferDesc &x = fn.buffers[live[a]];
    for (size_t b = a + 1; b < live.size(); ++b) {
      const BufferDesc &y = fn.buffers[live[b]];
      if (y.offset >= x.offset + x.bytes)
        break;
      if (x.bytes == 0 || y.bytes == 0)
        continue;
      if (first[live[a]] <= last[live[b]] && first[live[b]] <= last[live[a]])
        return Status::error(std::string(kind == BufferKind::Host ? "host " : "") +
                             "memory plan of '" + fn.name + "' overlaps: buffers " +
                             std::to_string(live[a]) + " and " + std::to_string(live[b]) +
                             " share bytes while both are live");
    }
  }
  return Status();
}

Status decodeFunction(const fbs::Function *f, const StepProgram &program, FunctionDesc &fn) {
  fn.name = f->name()->str();
  // An entry point may need a larger arena than the step's (a training
  // step's forward_backward, which backends grow the arena for).
  fn.arenaBytes = f->arena_bytes();
  fn.hostBytes = f->host_bytes();
  if (fn.hostBytes > program.hostBytes)
    return Status::error("its host arena (" + std::to_string(fn.hostBytes) +
                         " bytes) is larger than the step's (" + std::to_string(program.hostBytes) +
                         ")");
  if (f->buffers())
    for (const fbs::Buffer *b : *f->buffers()) {
      BufferDesc desc;
      G3RT_RETURN_IF_ERROR(decodeBuffer(b, program, fn, desc));
      fn.buffers.push_back(std::move(desc));
    }

  if (f->instrs())
    for (const fbs::Instr *in : *f->instrs()) {
      InstrDesc instr;
      instr.kernel = in->kernel()->str();
      std::string where =
          "instruction " + std::to_string(fn.instrs.size()) + " (" + instr.kernel + ")";
      // Only the name is checked here: which backend runs the kernel, and
      // whether it has it, is for the backend to say when it takes the step.
      if (!isKernelName(instr.kernel))
        return Status::error(where + ": no kernel of that name in this runtime");
      for (auto [list, vec] : {std::make_pair(in->inputs(), &instr.inputs),
                               std::make_pair(in->outputs(), &instr.outputs)})
        if (list)
          for (uint32_t i : *list) {
            if (i >= fn.buffers.size())
              return Status::error(where + " refers to buffer " + std::to_string(i) + " of " +
                                   std::to_string(fn.buffers.size()));
            vec->push_back(i);
          }
      if (instr.outputs.empty())
        return Status::error(where + " writes nothing");
      G3RT_RETURN_IF_ERROR(decodeAttrs(in->attrs(), instr.attrs).withContext(where));
      fn.instrs.push_back(std::move(instr));
    }

  if (f->outputs())
    for (const fbs::Binding *o : *f->outputs()) {
      if (o->buffer() >= fn.buffers.size())
        return Status::error("output '" + o->name()->str() + "' refers to a missing buffer");
      fn.outputs.emplace_back(o->name()->str(), o->buffer());
    }
  G3RT_RETURN_IF_ERROR(checkHostCopies(fn));
  return checkArenaPlan(fn);
}

} // namespace

Status checkArenaPlan(const FunctionDesc &fn) {
  for (BufferKind kind : {BufferKind::Arena, BufferKind::Host})
    G3RT_RETURN_IF_ERROR(checkPlan(fn, kind));
  return Status();
}

Status checkHostCopies(FunctionDesc &fn) {
  auto kindOf = [&](uint32_t i) { return fn.buffers[rootOf(fn, i)].kind; };
  for (const auto &o : fn.outputs)
    if (kindOf(o.second) == BufferKind::Host)
      return Status::error("output '" + o.first + "' is a host buffer");
  // Per copy id: the copy's (source, destination) and whether it was waited for.
  std::map<int64_t, std::pair<std::pair<uint32_t, uint32_t>, bool>> copies;
  for (size_t i = 0; i < fn.instrs.size(); ++i) {
    const InstrDesc &in = fn.instrs[i];
    const std::string where = "instruction " + std::to_string(i) + " (" + in.kernel + ")";
    const bool toHost = in.kernel == "copy_to_host", toDevice = in.kernel == "copy_to_device";
    const bool wait = in.kernel == "wait_copy";
    if (!toHost && !toDevice && !wait) {
      for (const std::vector<uint32_t> *list : {&in.inputs, &in.outputs})
        for (uint32_t b : *list)
          if (kindOf(b) == BufferKind::Host)
            return Status::error(where + " reads or writes host buffer " + std::to_string(b) +
                                 "; only the copy kernels may");
      continue;
    }
    if (in.inputs.size() != 1 || in.outputs.size() != 1)
      return Status::error(where + " must have one input and one output");
    const uint32_t src = in.inputs[0], dst = in.outputs[0];
    const BufferDesc &s = fn.buffers[src], &d = fn.buffers[dst];
    if (s.bytes != d.bytes || s.dtype != d.dtype)
      return Status::error(where + " copies between buffers of other sizes or dtypes");
    const BufferKind from = kindOf(src), to = kindOf(dst);
    const bool out = from == BufferKind::Arena && to == BufferKind::Host;
    const bool back = from == BufferKind::Host && to == BufferKind::Arena;
    if ((toHost && !out) || (toDevice && !back) || (wait && !out && !back))
      return Status::error(
          where + " must copy " +
          (toDevice ? "a host buffer to an arena buffer" : "an arena buffer to a host buffer") +
          (wait ? " (or back)" : ""));
    auto id = in.attrs.getInt("copy");
    if (!id || *id < 0 || *id >= (int64_t(1) << 20))
      return Status::error(where + " needs a copy id in [0, 2^20)");
    auto it = copies.find(*id);
    if (!wait) {
      if (it != copies.end())
        return Status::error(where + " reuses copy id " + std::to_string(*id));
      copies[*id] = {{src, dst}, false};
    } else {
      if (it == copies.end() || it->second.second || it->second.first != std::make_pair(src, dst))
        return Status::error(where + " waits for copy " + std::to_string(*id) +
                             ", which is not an unfinished copy of the same buffers");
      it->second.second = true;
    }
  }
  for (const auto &[id, c] : copies)
    if (!c.second)
      return Status::error("copy " + std::to_string(id) + " is never waited for");
  fn.copies = copies.empty() ? 0 : uint32_t(copies.rbegin()->first + 1);
  return Status();
}

Status checkDerivedParams(const StepProgram &program) {
  for (const DerivedParamDesc &d : program.derived) {
    const std::string where = "derived parameter '" + d.name + "'";
    const ParamDesc *source = program.findParam(d.source);
    if (!source || source->trainable || !isFloat(source->dtype) ||
        (source->shape.size() != 2 && source->shape.size() != 3))
      return Status::error(where + " names the source '" + d.source +
                           "', which is no frozen float parameter of rank 2 or 3");
    std::vector<int64_t> expected = source->shape;
    if (d.transposed())
      std::swap(expected[expected.size() - 1], expected[expected.size() - 2]);
    if (d.scales())
      expected.pop_back();
    const DType dtype = d.scales() ? DType::F32 : DType::F8E4M3;
    if (d.shape != expected || d.dtype != dtype)
      return Status::error(where + " is " + std::string(dtypeName(d.dtype)) + " " +
                           shapeString(d.shape) + ", its derivation of '" + d.source + "' makes " +
                           std::string(dtypeName(dtype)) + " " + shapeString(expected));
    // Values and scales come in pairs: what reads one reads the other.
    if (!program.partnerOf(d))
      return Status::error(where + " has no " + (d.scales() ? "values" : "scales") + " beside it");
  }
  return Status();
}

// Every backend allocates a persistent tensor once, as its first declaration
// says (forEachStateBuffer), so each later declaration must agree with it.
Status checkStateDeclarations(const StepProgram &program) {
  std::map<std::pair<BufferKind, std::string>, const BufferDesc *> first;
  for (const FunctionDesc &fn : program.functions)
    for (const BufferDesc &b : fn.buffers) {
      if (isPlanned(b.kind))
        continue;
      auto [it, inserted] = first.emplace(std::make_pair(b.kind, b.name), &b);
      if (!inserted && (it->second->dtype != b.dtype || it->second->shape != b.shape))
        return Status::error("function '" + fn.name + "' declares '" + b.name + "' as " +
                             shapeString(b.shape) + " " + std::string(dtypeName(b.dtype)) +
                             ", an earlier function as " + shapeString(it->second->shape) + " " +
                             std::string(dtypeName(it->second->dtype)));
    }
  return Status();
}

Status parseStep(const std::vector<uint8_t> &file, const std::string &displayName,
                 StepProgram &out) {
  auto fail = [&](const Status &s) { return s.withContext(displayName); };
  size_t offset = 0, size = 0;
  Status s = unwrapStepPayload(file, offset, size);
  if (!s.ok())
    return fail(s);
  const uint8_t *payload = file.data() + offset;
  flatbuffers::Verifier verifier(payload, size);
  // The verifier checks that the payload holds a root offset and an
  // identifier before it compares the identifier; the payload may be shorter.
  if (!fbs::VerifyStepBuffer(verifier))
    return fail(Status::error("the step payload is malformed (FlatBuffer verification failed)"));
  const fbs::Step *step = fbs::GetStep(payload);

  StepProgram program;
  s = decodeModel(step->model(), program.model);
  if (s.ok())
    s = decodeTraining(step->training(), program.training);
  if (!s.ok())
    return fail(s);
  program.arenaBytes = step->arena_bytes();
  program.hostBytes = step->host_bytes();
  program.arenaAlignment = step->arena_alignment();
  if (program.arenaAlignment & (program.arenaAlignment - 1))
    return fail(Status::error("arena alignment is not a power of two"));
  if (step->params())
    for (const fbs::Param *p : *step->params()) {
      ParamDesc desc;
      desc.name = p->name()->str();
      std::string where = "parameter '" + desc.name + "'";
      if (program.findParam(desc.name))
        return fail(Status::error(where + " appears twice"));
      s = decodeDType(p->dtype(), desc.dtype);
      uint64_t bytes = 0;
      if (s.ok())
        s = decodeShape(p->shape(), desc.shape, dtypeSize(desc.dtype), bytes);
      if (!s.ok())
        return fail(s.withContext(where));
      if (!isFloat(desc.dtype))
        return fail(Status::error(where + " is not a float tensor"));
      if (uint8_t(p->init()) > uint8_t(InitKind::KaimingUniform))
        return fail(Status::error(where + " has an unknown initialisation"));
      desc.trainable = p->trainable();
      desc.init = InitKind(uint8_t(p->init()));
      desc.initStd = p->init_std();
      program.params.push_back(std::move(desc));
    }
  if (step->derived())
    for (const fbs::DerivedParam *d : *step->derived()) {
      s = decodeDerived(d, program);
      if (!s.ok())
        return fail(s);
    }
  s = checkDerivedParams(program);
  if (!s.ok())
    return fail(s);
  if (step->functions())
    for (const fbs::Function *f : *step->functions()) {
      FunctionDesc fn;
      s = decodeFunction(f, program, fn);
      if (!s.ok())
        return fail(s.withContext("function '" + f->name()->str() + "'"));
      program.functions.push_back(std::move(fn));
    }
  s = checkStateDeclarations(program);
  if (!s.ok())
    return fail(s);
  out = std::move(program);
  return Status();
}

Status loadStep(const std::string &path, StepProgram &out) {
  std::vector<uint8_t> bytes;
  Status s = readFile(path, bytes, "step file");
  if (!s.ok())
    return s;
  return parseStep(bytes, path, out);
}

} // namespace g3rt
