// The one part of seqpar's C interface written in C: the options' defaults (the rest is Swift,
// Sources/SeqparC, exported under the names seqpar.h declares).
#include "seqpar.h"

#include <string.h>

void seqpar_options_init(seqpar_options *options) {
    if (!options) return;
    memset(options, 0, sizeof *options);
    options->dtype = SEQPAR_F32;
    options->threads = 1;
}
