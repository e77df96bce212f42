/*
 * Replay driver for builds without libFuzzer (OTAKEY_FUZZ_ENGINE=standalone): runs
 * LLVMFuzzerTestOneInput once on each file named on the command line, or on every regular file of
 * a directory, and prints how many ran. A property failure aborts with the harness's message, as
 * under libFuzzer.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return 1;
    }
    buf = malloc(n > 0 ? (size_t)n : 1u);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    (void)LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

int main(int argc, char **argv);

int main(int argc, char **argv)
{
    unsigned ran = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "cannot stat %s\n", argv[i]);
            return 1;
        }
        if (S_ISDIR(sb.st_mode)) {
            DIR *dir = opendir(argv[i]);
            struct dirent *e;
            if (dir == NULL) {
                return 1;
            }
            while ((e = readdir(dir)) != NULL) {
                char path[4096];
                if (e->d_name[0] == '.') {
                    continue;
                }
                snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
                if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                    if (run_file(path) != 0) {
                        closedir(dir);
                        return 1;
                    }
                    ran++;
                }
            }
            closedir(dir);
        } else {
            if (run_file(argv[i]) != 0) {
                return 1;
            }
            ran++;
        }
    }
    printf("replayed %u inputs, no property failed\n", ran);
    return 0;
}
