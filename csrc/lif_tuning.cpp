// The tuning knobs of lif_tuning.h: their names, environment variables and
// allowed values, in one table that both the environment and _set_tuning go
// through, so a bad value is rejected the same way from either.
#include "lif_tuning.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <vector>

namespace tcl_fast {
namespace lif {
namespace {

// A knob's values are a short list of texts; the Tuning field stores the
// chosen one's index, converted to its type.
struct Knob {
  std::string_view name;  // tcl_fast.ops.tuning's keyword
  const char* env;        // the variable giving the initial value
  std::vector<std::string_view> choices;
  int (*load)(const Tuning&);
  void (*store)(Tuning&, int);
};

constexpr auto kRelaxed = std::memory_order_relaxed;
static_assert(kBackwardLanes == 4, "cuda_bwd_lanes' choices below are 4, 2, 1");

const std::vector<Knob>& knobs() {
  static const std::vector<Knob> table = {
      {"cpu_isa", "TCL_FAST_CPU_ISA", {"baseline", "avx2", "avx512"},
       [](const Tuning& t) { return static_cast<int>(t.cpu_isa.load(kRelaxed)); },
       [](Tuning& t, int i) { t.cpu_isa.store(static_cast<CpuIsa>(i), kRelaxed); }},
      {"cpu_groups", "TCL_FAST_CPU_GROUPS", {"auto", "narrow", "wide"},
       [](const Tuning& t) { return static_cast<int>(t.cpu_groups.load(kRelaxed)); },
       [](Tuning& t, int i) { t.cpu_groups.store(static_cast<CpuGroups>(i), kRelaxed); }},
      {"cuda_bwd_lanes", "TCL_FAST_CUDA_BWD_LANES", {"4", "2", "1"},  // kBackwardLanes >> index
       [](const Tuning& t) {
         const int lanes = t.cuda_bwd_lanes.load(kRelaxed);
         return lanes == kBackwardLanes ? 0 : lanes == kBackwardLanes / 2 ? 1 : 2;
       },
       [](Tuning& t, int i) { t.cuda_bwd_lanes.store(kBackwardLanes >> i, kRelaxed); }},
      {"cuda_packed", "TCL_FAST_CUDA_PACKED", {"0", "1"},
       [](const Tuning& t) { return static_cast<int>(t.cuda_packed.load(kRelaxed)); },
       [](Tuning& t, int i) { t.cuda_packed.store(i == 1, kRelaxed); }},
  };
  return table;
}

const Knob& knob_named(std::string_view name) {
  for (const Knob& k : knobs())
    if (k.name == name) return k;
  std::string names;
  for (const Knob& k : knobs()) names += (names.empty() ? "" : ", ") + std::string(k.name);
  TORCH_CHECK_VALUE(false, "tcl_fast tuning: unknown knob '", name, "'; the knobs are ", names);
}

// The one validator: the index of `value` among the knob's choices.
int choice_index(const Knob& k, std::string_view value) {
  for (size_t i = 0; i < k.choices.size(); ++i)
    if (k.choices[i] == value) return static_cast<int>(i);
  std::string allowed;
  for (std::string_view c : k.choices) allowed += (allowed.empty() ? "" : ", ") + std::string(c);
  TORCH_CHECK_VALUE(false, "tcl_fast tuning: ", k.name, " (", k.env, ") must be one of ", allowed,
                    "; got '", value, "'");
}

// Validates every variable before storing any, so a bad one leaves the defaults.
// An empty variable counts as unset.
void read_environment(Tuning& t) {
  std::vector<int> chosen;
  for (const Knob& k : knobs()) {
    const char* v = std::getenv(k.env);
    chosen.push_back(v == nullptr || v[0] == '\0' ? -1 : choice_index(k, v));
  }
  for (size_t i = 0; i < chosen.size(); ++i)
    if (chosen[i] >= 0) knobs()[i].store(t, chosen[i]);
}

Tuning& process_tuning() {
  static Tuning t;
  // A throw leaves `read` uninitialised: the next call reads the environment again.
  static const bool read = (read_environment(t), true);
  (void)read;
  return t;
}

}  // namespace

const Tuning& tuning() { return process_tuning(); }

std::string get_tuning(std::string_view knob) {
  const Knob& k = knob_named(knob);
  return std::string(k.choices[k.load(process_tuning())]);
}

void set_tuning(std::string_view knob, std::string_view value) {
  const Knob& k = knob_named(knob);
  const int i = choice_index(k, value);
  k.store(process_tuning(), i);
}

}  // namespace lif
}  // namespace tcl_fast
