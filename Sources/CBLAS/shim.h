// OpenBLAS's CBLAS interface plus its thread controls. Nothing here but the include:
// cblas.h imports into Swift as it is.
#ifndef SEQPAR_CBLAS_SHIM_H
#define SEQPAR_CBLAS_SHIM_H
#include <cblas.h>
#endif
