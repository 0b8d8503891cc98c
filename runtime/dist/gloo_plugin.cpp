//===- gloo_plugin.cpp - the Gloo communicator as a loadable library ------===//
//
// libg3rt_gloo.so holds the Gloo communicator so that g3moe-run itself does
// not link Gloo: it runs where libgloo is not installed (the GPU machines)
// and loads this library only for a job of several processes
// (load_communicator.h).
//
//===----------------------------------------------------------------------===//

#include "runtime/dist/gloo_communicator.h"

/// The entry point load_communicator.cpp looks up: makeGlooCommunicator.
extern "C" __attribute__((visibility("default"))) void
g3rt_make_gloo_communicator(const g3rt::World *world, const g3rt::GlooOptions *options,
                            std::unique_ptr<g3rt::Communicator> *out, g3rt::Status *status) {
  *status = g3rt::makeGlooCommunicator(*world, *options, *out);
}
