import torch

from models.cnn import CNNConfig, ImageClassifier
from models.recsys import RatingPredictor, RecsysConfig
from models.rnn import PAD_ID, RNNConfig, TextClassifier


def test_cnn_takes_raw_pixels_and_returns_logits():
    model = ImageClassifier(CNNConfig(widths=(8, 16), blocks_per_stage=1, stem_stride=2)).eval()
    assert model(torch.rand(3, 1, 28, 28) * 255).shape == (3, 10)


def test_rnn_output_ignores_padding():
    torch.manual_seed(0)
    model = TextClassifier(RNNConfig(vocab_size=50, embed_dim=8, hidden_size=8)).eval()
    tokens = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, PAD_ID, PAD_ID, PAD_ID]])
    with torch.no_grad():
        short = model(tokens, torch.tensor([3]))
        long = model(padded, torch.tensor([3]))
        batched = model(torch.tensor([[5, 6, 7, PAD_ID], [9, 8, 7, 6]]), torch.tensor([3, 4]))
    torch.testing.assert_close(short, long)
    torch.testing.assert_close(short[0], batched[0])


def test_recsys_predicts_ratings_in_range():
    config = RecsysConfig(
        num_users=5,
        num_items=7,
        num_ages=7,
        num_genders=2,
        num_occupations=3,
        num_years=10,
        num_genres=4,
        title_vocab_size=9,
        embed_dim=8,
        tower_dim=8,
        head_hidden=(8,),
    )
    model = RatingPredictor(config).eval()
    n = 6
    out = model(
        torch.stack(
            [
                torch.randint(0, 5, (n,)),
                torch.randint(0, 7, (n,)),
                torch.randint(0, 2, (n,)),
                torch.randint(0, 3, (n,)),
            ],
            1,
        ),
        torch.stack([torch.randint(0, 7, (n,)), torch.randint(0, 10, (n,))], 1),
        torch.randint(0, 2, (n, 4)).float(),
        torch.randint(0, 9, (n, 3)),
    )
    assert out.shape == (n,)
    assert ((out >= 1.0) & (out <= 5.0)).all()
