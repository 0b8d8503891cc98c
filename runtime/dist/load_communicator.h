//===- load_communicator.h - a job's communicator, loaded on demand -*- C++ -*-===//
//
// The communicators live in libraries of their own (Gloo's in libg3rt_gloo.so)
// that a process loads only when it is one of several: a single-process run
// needs none of them installed.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_LOAD_COMMUNICATOR_H
#define G3MOE_RUNTIME_DIST_LOAD_COMMUNICATOR_H

#include "runtime/dist/gloo_communicator.h"

namespace g3rt {

/// Joins the job `world` describes through the Gloo communicator of
/// libg3rt_gloo.so: the file G3MOE_GLOO_PLUGIN names, else the one beside
/// the running executable. Fails naming the library when it cannot be
/// loaded (and why), or as makeGlooCommunicator fails.
Status loadGlooCommunicator(const World &world, const GlooOptions &options,
                            std::unique_ptr<Communicator> &out);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_LOAD_COMMUNICATOR_H
