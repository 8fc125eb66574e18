package bench;

/**
 * A correctly rounded sum, as Python's math.fsum computes it (Shewchuk's partials, then the
 * half-even correction of the last step): the worker's softmax divides by this sum, so the
 * probabilities come out the same to the bit wherever exp does.
 */
final class FSum {
  private FSum() {}

  static double sum(double[] xs, int count) {
    double[] partials = new double[32];
    int size = 0;
    for (int k = 0; k < count; k++) {
      double x = xs[k];
      int i = 0;
      for (int j = 0; j < size; j++) {
        double y = partials[j];
        if (Math.abs(x) < Math.abs(y)) {
          double tmp = x;
          x = y;
          y = tmp;
        }
        double hi = x + y;
        double lo = y - (hi - x);
        if (lo != 0.0) {
          partials[i++] = lo;
        }
        x = hi;
      }
      if (i == partials.length) {
        partials = java.util.Arrays.copyOf(partials, partials.length * 2);
      }
      partials[i] = x;
      size = i + 1;
    }
    if (size == 0) {
      return 0.0;
    }
    int n = size - 1;
    double hi = partials[n];
    double lo = 0.0;
    while (n > 0) {
      double x = hi;
      double y = partials[--n];
      hi = x + y;
      double yr = hi - x;
      lo = y - yr;
      if (lo != 0.0) {
        break;
      }
    }
    if (n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))) {
      double y = lo * 2.0;
      double x = hi + y;
      double yr = x - hi;
      if (y == yr) {
        hi = x;
      }
    }
    return hi;
  }
}
