/* A stand-in libnvidia-ml.so.1 with one GPU, for tests on machines without an NVIDIA driver.
 *
 * NVIDIA's Python bindings (nvidia-ml-py) load the library with CDLL("libnvidia-ml.so.1") and
 * look each function up by name on first call, so a process whose LD_LIBRARY_PATH finds this
 * file runs the real bindings against it. The GPU's state is a text file named by
 * NVML_STANDIN_STATE holding "<energy in mJ> <power in mW> <fail>": a non-zero fail makes every
 * energy and power read return NVML_ERROR_GPU_IS_LOST, as a GPU that fell off the bus does.
 *
 *   cc -shared -fPIC -o libnvidia-ml.so.1 nvml_standin.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

static const char UUID[] = "GPU-5a1d0000-0000-4000-8000-000000000001";
static const char NAME[] = "NVIDIA H200 (stand-in)";
static int the_gpu = 0; /* its address is the device handle */

static int read_state(unsigned long long *energy_mj, unsigned int *power_mw) {
    const char *path = getenv("NVML_STANDIN_STATE");
    if (path == NULL) return NVML_ERROR_UNKNOWN;
    FILE *file = fopen(path, "r");
    if (file == NULL) return NVML_ERROR_UNKNOWN;
    unsigned long long energy = 0;
    unsigned int power = 0;
    int fail = 0;
    int fields = fscanf(file, "%llu %u %d", &energy, &power, &fail);
    fclose(file);
    if (fields != 3) return NVML_ERROR_UNKNOWN;
    if (fail) return NVML_ERROR_GPU_IS_LOST;
    if (energy_mj) *energy_mj = energy;
    if (power_mw) *power_mw = power;
    return NVML_SUCCESS;
}

static int copy_text(const char *text, char *out, unsigned int length) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

int nvmlInitWithFlags(unsigned int flags) { (void)flags; return NVML_SUCCESS; }
int nvmlInit_v2(void) { return NVML_SUCCESS; }
int nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    default: return "Unknown Error";
    }
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 1;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    if (device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (index != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &the_gpu;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByUUID(const char *uuid, void **device) {
    if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strcmp(uuid, UUID) != 0) return NVML_ERROR_NOT_FOUND;
    *device = &the_gpu;
    return NVML_SUCCESS;
}

int nvmlDeviceGetIndex(void *device, unsigned int *index) {
    if (device != &the_gpu || index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *index = 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    if (device != &the_gpu) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_text(NAME, name, length);
}

int nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length) {
    if (device != &the_gpu) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_text(UUID, uuid, length);
}

int nvmlDeviceGetMigMode(void *device, unsigned int *current, unsigned int *pending) {
    (void)device; (void)current; (void)pending;
    return NVML_ERROR_NOT_SUPPORTED; /* no MIG on this board */
}

int nvmlDeviceGetTotalEnergyConsumption(void *device, unsigned long long *energy_mj) {
    if (device != &the_gpu || energy_mj == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    return read_state(energy_mj, NULL);
}

int nvmlDeviceGetPowerUsage(void *device, unsigned int *power_mw) {
    if (device != &the_gpu || power_mw == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    return read_state(NULL, power_mw);
}
