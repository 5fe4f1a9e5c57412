// Open MPI's handles are macros over addresses of global objects (MPI_COMM_WORLD is
// `((MPI_Comm)&ompi_mpi_comm_world)`), which Swift cannot import. Each gets a static inline
// accessor here; nothing else lives in this header.
#ifndef SEQPAR_CMPI_SHIM_H
#define SEQPAR_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm seqpar_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm seqpar_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Errhandler seqpar_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Request seqpar_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *seqpar_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *seqpar_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline void *seqpar_in_place(void) { return MPI_IN_PLACE; }
static inline int seqpar_undefined(void) { return MPI_UNDEFINED; }
static inline int seqpar_any_source(void) { return MPI_ANY_SOURCE; }
static inline int seqpar_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int seqpar_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int seqpar_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
static inline int seqpar_success(void) { return MPI_SUCCESS; }

static inline MPI_Datatype seqpar_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype seqpar_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype seqpar_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype seqpar_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype seqpar_uint8(void) { return MPI_UINT8_T; }
static inline MPI_Datatype seqpar_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Datatype seqpar_byte(void) { return MPI_BYTE; }

static inline MPI_Op seqpar_op_sum(void) { return MPI_SUM; }
static inline MPI_Op seqpar_op_max(void) { return MPI_MAX; }
static inline MPI_Op seqpar_op_null(void) { return MPI_OP_NULL; }
#endif
